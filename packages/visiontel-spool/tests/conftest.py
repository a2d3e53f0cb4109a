"""Fixtures of visiontel-spool's tests: the receiver, the OTLP environment pointing at it,
and no state left over from an earlier test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from spool_support import Receiver, start_receiver, stop_receiver

from visiontel._support import env
from visiontel.spool import _diag, _otel_private


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = start_receiver()
    yield receiver
    stop_receiver(receiver)


@pytest.fixture
def otlp_env(monkeypatch: pytest.MonkeyPatch, receiver: Receiver, tmp_path: Path) -> Path:
    """OTLP variables pointing at the receiver, a private spool directory (returned)."""
    for name in ("PROTOCOL", "HEADERS", "COMPRESSION", "TIMEOUT"):
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{name}", raising=False)
        for signal in ("TRACES", "METRICS", "LOGS"):
            monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{signal}_{name}", raising=False)
            monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
    monkeypatch.setenv("VISIONTEL_SPOOL_MAX_BACKOFF", "0.2")
    spool = tmp_path / "spool"
    monkeypatch.setenv("VISIONTEL_SPOOL_DIR", str(spool))
    return spool


@pytest.fixture
def grpc_receiver() -> Iterator[Any]:
    from spool_grpc_support import start_grpc_receiver, stop_grpc_receiver

    receiver = start_grpc_receiver()
    yield receiver
    stop_grpc_receiver(receiver)


@pytest.fixture
def grpc_env(monkeypatch: pytest.MonkeyPatch, otlp_env: Path, grpc_receiver: Any) -> Path:
    """otlp_env, but OTLP/gRPC to the gRPC receiver (the HTTP one stays up, unused)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", grpc_receiver.endpoint)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_INSECURE", raising=False)
    return otlp_env


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No log-once or loss tally left by an earlier test; the gate decides afresh."""
    monkeypatch.setattr(_diag, "_last_log", {})
    _diag.errors.reset()
    env.reset()
    monkeypatch.setattr(_diag, "_since_log", _diag.Counter())
    monkeypatch.setattr(_diag, "_tally", _diag.Counter())
    _otel_private._force(None)
    yield
    _otel_private._force(None)
