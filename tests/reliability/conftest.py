"""Fixtures of the reliability suite: the profile, the results file, the built collector.

Profiles (``VISIONTEL_RELIABILITY_PROFILE``): ``short`` (CI: outages of ~10 s, 30 s of load)
and ``full`` (``nox -s reliability``: 60 s outages, 5 minutes of load). Each test records one
row of docs/reliability.md through the ``record`` fixture; tests/reliability/render.py turns
the rows into the table.
"""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from reliability_support import (  # noqa: E402
    COLLECTOR_HINT,
    PROFILE,
    RUN_ID,
    Collectors,
    append_row,
    results_path,
    start_run,
)


def pytest_report_header() -> str:
    return f"visiontel reliability profile: {PROFILE.name}, run {RUN_ID}, results {results_path()}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """The run's header line in the results file: render.py checks rows against it."""
    if not session.config.option.collectonly:
        start_run()


@pytest.fixture(scope="session")
def profile() -> Any:
    return PROFILE


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., None]:
    """record(row_id, fault=, duration=, measured=, lost=) appends this test's row."""
    test_name = request.node.name.split("[")[0]

    def write(row_id: str, **fields: object) -> None:
        append_row(row_id, test_name, fields)

    return write


@pytest.fixture(scope="session")
def otelcol() -> pathlib.Path:
    value = os.environ.get("VISIONTEL_OTELCOL", "")
    if not value:
        pytest.skip(f"otelcol-visiontel not available: {COLLECTOR_HINT}")
    path = pathlib.Path(value)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"VISIONTEL_OTELCOL={value} is not an executable file: {COLLECTOR_HINT}")
    return path


@pytest.fixture
def collectors(otelcol: pathlib.Path, tmp_path: pathlib.Path) -> Iterator[Collectors]:
    procs = Collectors(otelcol, tmp_path)
    yield procs
    procs.stop_all()
