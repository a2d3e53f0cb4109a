"""Fixtures for the collector-config tests: the built collector, promtool, free ports.

These tests need binaries that the `collector` nox session builds or fetches
(collector-config/toolchain.py) and announces through environment variables:

    VISIONTEL_OTELCOL   otelcol-visiontel built from collector-config/builder/manifest.yaml
    VISIONTEL_PROMTOOL  promtool from Debian's prometheus package

Run them with `nox -s collector`. Under the workspace-wide `tests` session (or a bare
`pytest`) the variables are unset and every test here is skipped with that instruction;
when a variable is set but names no executable file, the test fails.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from collector_support import SESSION_HINT, Stack


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("VISIONTEL_OTELCOL") or os.environ.get("VISIONTEL_PROMTOOL"):
        return
    here = pathlib.Path(__file__).parent
    skip = pytest.mark.skip(
        reason=f"needs otelcol: collector-config tests need built binaries: {SESSION_HINT}"
    )
    for item in items:
        if here in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(skip)


def _tool(variable: str) -> pathlib.Path:
    value = os.environ.get(variable)
    if not value:
        pytest.fail(f"{variable} is not set: {SESSION_HINT}")
    path = pathlib.Path(value)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{variable}={value} is not an executable file: {SESSION_HINT}")
    return path


@pytest.fixture(scope="session")
def otelcol() -> pathlib.Path:
    return _tool("VISIONTEL_OTELCOL")


@pytest.fixture(scope="session")
def promtool() -> pathlib.Path:
    return _tool("VISIONTEL_PROMTOOL")


@pytest.fixture(scope="session")
def stack_binaries() -> None:
    """The backends of the `stack` nox session (collector-config/stack/stack.py)."""
    if not os.environ.get("VISIONTEL_JAEGER"):
        pytest.skip(
            "needs stack: end-to-end stack tests need Jaeger and Prometheus: run `nox -s stack`"
        )
    for variable in ("VISIONTEL_OTELCOL", "VISIONTEL_JAEGER", "VISIONTEL_PROMETHEUS"):
        _tool(variable)
    _tool("VISIONTEL_ZIPKIN")  # a jar, installed 0755 by toolchain.py like the binaries
    _tool("VISIONTEL_VICTORIALOGS")  # the log store the stack's collector sends logs to


@pytest.fixture
def start_collector(otelcol: pathlib.Path, tmp_path: pathlib.Path) -> Iterator[Any]:
    """start(configs, env, name) runs otelcol-visiontel until the test ends.

    Should one of env's ports be taken, the collector is started again on fresh ones, which
    are written into env: read addresses from env after start(). Depends on `otelcol` so a
    missing binary fails with the session hint first.
    """
    stack = Stack(tmp_path)

    def start(configs: list[pathlib.Path], env: dict[str, str], name: str = "otelcol") -> None:
        stack.start_otelcol(name, configs, env)

    yield start
    stack.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost (openssl CLI)."""
    directory = tmp_path_factory.mktemp("tls")
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_cert),
        "-days",
        "2",
        "-subj",
        "/CN=visiontel-test-ca",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=localhost",
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_cert),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return {"ca": ca_cert, "cert": cert, "key": key}
