"""Workspace-wide pytest rule: in a CI session, a skip is a failure unless the resource it
names is one the session may lack.

A test that cannot run here skips with a reason of the form ``needs <resource>: <what to
do>`` (e.g. ``needs cuda: no CUDA device``). Outside CI that is a normal skip. Every nox
session that CI runs sets ``VISIONTEL_STRICT_SKIPS=1`` and lists in
``VISIONTEL_MAY_LACK`` the resources that CI machines may really lack (a GPU); any other
skip, whether it names a resource or not, then fails the run with the skip's own reason,
so a capability cannot silently stop being tested. Deselection (``-m``) is how a session
leaves out tests that belong to another session; it is not a skip.

Fixtures every test tree uses live here too.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Generator, Iterator

import pytest

_NEEDS = re.compile(r"needs ([a-z0-9_.-]+):")


def _strict() -> bool:
    return os.environ.get("VISIONTEL_STRICT_SKIPS", "") == "1"


def _may_lack() -> set[str]:
    raw = os.environ.get("VISIONTEL_MAY_LACK", "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_if_not_allowed(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not (report.skipped and _strict()) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    match = _NEEDS.search(reason)
    if match and match.group(1) in _may_lack():
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped in a CI session, which must run it: {reason}\n"
        "Provide the resource in the nox session, or, if CI machines may really lack it, "
        "skip with 'needs <resource>: ...' and add the resource to VISIONTEL_MAY_LACK there."
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    _fail_if_not_allowed(outcome.get_result())  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, None]:
    outcome = yield
    _fail_if_not_allowed(outcome.get_result())  # type: ignore[attr-defined]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something listens on for the whole test (held, never released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])
