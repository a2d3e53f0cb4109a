"""Checks made before any process starts, each failing with one line saying what to do."""

from __future__ import annotations

import errno
import pathlib
import socket

from visiontel._support.otlp import (
    otlp_log_exporter,
    otlp_metric_exporter,
    otlp_protocol,
    otlp_span_exporter,
)
from visiontel._support.redact import redact_url
from visiontel.demo._config import DemoConfig
from visiontel.demo._errors import UsageError, port_in_use
from visiontel.demo._frames import SourceError, check
from visiontel.demo._net import probe

_TIMEOUT = 3.0


def _port_free(port: int) -> bool:
    # No SO_REUSEADDR/SO_REUSEPORT: a port anything listens on must fail here, exactly
    # as it would for gRPC's own bind (which does set SO_REUSEPORT).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def ports(config: DemoConfig) -> None:
    """Check the ports given. Ports left at 0 stay 0: each service binds port 0 itself and
    reports the port it got (``READY port``), so no port is chosen here and then lost to
    another process before the service binds it."""
    for flag, attr in (("--detector-port", "detector_port"), ("--sink-port", "sink_port")):
        port = getattr(config, attr)
        if port and not _port_free(port):
            raise port_in_use(port, flag)


def source(config: DemoConfig) -> None:
    try:
        check(config.source, _TIMEOUT)
    except SourceError as exc:
        raise UsageError(str(exc)) from None


def exporters() -> None:
    """The OTLP exporters the environment asks for (protocol per signal) are installed."""
    for build in (otlp_span_exporter, otlp_metric_exporter, otlp_log_exporter):
        try:
            exporter = build()
        except RuntimeError as exc:  # the message names the package to install
            raise UsageError(str(exc)) from None
        exporter.shutdown()


def endpoint(url: str) -> None:
    """The OTLP endpoint must at least accept a TCP connection."""
    safe = redact_url(url)
    # Without a port: OTLP's own for the protocol the traces go by.
    http_port = 4317 if otlp_protocol("traces") == "grpc" else 4318
    try:
        reason = probe(url, {"http": http_port, "https": 443}, _TIMEOUT)
    except ValueError as exc:
        raise UsageError(f"OTLP endpoint {safe} {exc}: e.g. http://localhost:4318") from None
    if reason is not None:
        raise UsageError(
            f"cannot reach the OTLP endpoint {safe} ({reason}): start the collector, correct "
            "--otlp-endpoint / OTEL_EXPORTER_OTLP_ENDPOINT, or unset it to write files"
        ) from None


def output(config: DemoConfig) -> pathlib.Path:
    base = pathlib.Path(config.output)
    run_dir = base / config.run_id
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise UsageError(
            f"cannot create {run_dir} ({exc.strerror}): choose a writable --output"
        ) from None
    return run_dir
