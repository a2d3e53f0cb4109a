"""The one gate for OpenTelemetry internals: which sender it picks on each exporter shape,
and the public fall-back sending the same request."""

from __future__ import annotations

import logging
from importlib import metadata

import pytest
import requests
from spool_support import batches

from visiontel.spool import SpoolMetricExporter, SpoolSpanExporter, _otel_private
from visiontel.spool._http import Outcome, PublicSender


class _Response:
    def __init__(self, status: int) -> None:
        self.status_code = status


class Exporter130:
    """1.30 - 1.34: _export(body), one POST with the exporter's own timeout."""

    def __init__(self, status: int | None) -> None:
        self.status, self.calls = status, []

    def _export(self, serialized_data: bytes) -> _Response:
        self.calls.append(serialized_data)
        if self.status is None:
            raise requests.ConnectionError("refused")
        return _Response(self.status)


class Exporter135(Exporter130):
    """1.35 - 1.44: _export(body, timeout_sec)."""

    def _export(self, serialized_data: bytes, timeout_sec: float | None = None) -> _Response:
        self.calls.append((serialized_data, timeout_sec))
        return _Response(self.status or 0)


class _Result:
    def __init__(self, status: int | None) -> None:
        self.status_code, self.error = status, None


class Client145:
    def __init__(self, status: int | None) -> None:
        self.status, self.calls = status, []

    def _compress(self, body: bytes) -> bytes:
        return b"z" + body

    def _submit(self, data: bytes, timeout: float) -> _Result:
        self.calls.append((data, timeout))
        return _Result(self.status)


class Exporter145:
    def __init__(self, status: int | None) -> None:
        self._client = Client145(status)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SENT),
        (None, Outcome.RETRY),
        (503, Outcome.RETRY),
        (429, Outcome.RETRY),
        (408, Outcome.RETRY),
        (400, Outcome.REJECTED),
        (401, Outcome.REJECTED),
    ],
)
def test_each_release_shape_gets_its_own_sender(status, outcome):
    old = Exporter130(status)
    assert _otel_private.private_sender(old)(b"body", 3.0) is outcome
    assert old.calls == [b"body"]
    if status is not None:
        mid = Exporter135(status)
        assert _otel_private.private_sender(mid)(b"body", 3.0) is outcome
        assert mid.calls == [(b"body", 3.0)]
    new = Exporter145(status)
    assert _otel_private.private_sender(new)(b"body", 2.5) is outcome
    assert new._client.calls == [(b"zbody", 2.5)]  # compressed as the exporter would


def test_the_installed_exporter_is_admitted():
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    assert _otel_private.private_sender(OTLPSpanExporter()) is not None


def test_gate_shuts_outside_the_tested_releases(monkeypatch, caplog):
    monkeypatch.setattr(metadata, "version", lambda name: "1.46.0")
    _otel_private._force(None)
    with caplog.at_level(logging.INFO, logger="visiontel.spool"):
        assert _otel_private.private_sender(Exporter145(200)) is None
    assert "outside the releases" in caplog.text
    assert _otel_private.metric_preferences(object()) == (None, None)


def test_an_exporter_without_a_known_shape_is_refused():
    assert _otel_private.private_sender(object()) is None


def _one_request(receiver, gate_open: bool):
    _otel_private._force(None if gate_open else False)
    exporter = SpoolSpanExporter()
    private = not isinstance(exporter._core._send, PublicSender)
    assert private is gate_open
    exporter.export(batches(1, per_batch=3)[0])
    exporter.shutdown()
    return receiver.requests[-1]


def test_public_fallback_sends_the_same_request(receiver, otlp_env, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "api-key=k1,x-tenant=cam%20yard")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "deflate")
    via_exporter = _one_request(receiver, gate_open=True)
    via_public = _one_request(receiver, gate_open=False)
    assert via_public.path == via_exporter.path == "/v1/traces"
    from spool_support import span_names

    assert span_names(via_public.body) == span_names(via_exporter.body)
    for header in ("api-key", "x-tenant", "content-encoding", "content-type"):
        assert via_public.headers.get(header) == via_exporter.headers.get(header), header
    assert via_public.headers["x-tenant"] == "cam yard"


def test_public_fallback_replays_through_an_outage(receiver, otlp_env):
    _otel_private._force(False)
    receiver.set("reset")
    exporter = SpoolSpanExporter()
    sent = batches(5)
    for batch in sent:
        exporter.export(batch)
    assert exporter.stats()["batches"] == 5
    receiver.set("ok")
    assert exporter.force_flush(30_000)
    assert receiver.span_names() == [s.name for b in sent for s in b]
    exporter.shutdown()


def test_metric_preferences_come_from_the_exporter_through_the_gate(otlp_env, monkeypatch):
    from opentelemetry.sdk.metrics import Counter
    from opentelemetry.sdk.metrics.export import AggregationTemporality

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    exporter = SpoolMetricExporter()
    assert exporter._preferred_temporality[Counter] is AggregationTemporality.DELTA
    exporter.shutdown()
    _otel_private._force(False)  # gate shut: read from the environment as specified
    public = SpoolMetricExporter()
    assert public._preferred_temporality == exporter._preferred_temporality
    public.shutdown()
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
    public = SpoolMetricExporter()
    assert public._preferred_temporality[Counter] is AggregationTemporality.CUMULATIVE
    public.shutdown()
