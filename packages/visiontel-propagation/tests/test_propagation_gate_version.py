"""The gate follows the installed opentelemetry-api release: on inside the tested range,
off (logged once, everything still working) outside it or when the version is unknown."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from importlib import metadata

import pytest
from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import visiontel.propagation as vp
from visiontel.propagation import _otel_private

TRACE_ID, SPAN_ID = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
FRAME = vp.FrameIdentity("cam-9", 5, 1_732_540_000_000_000_000)
_real_version = metadata.version


@pytest.fixture
def installed_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The gate undecided, so that the next use reads the (pretended) version afresh."""
    _otel_private._force(None)
    yield monkeypatch
    monkeypatch.undo()
    _otel_private._force(None)


def _pretend(monkeypatch: pytest.MonkeyPatch, api_version: str | None) -> None:
    """Make importlib.metadata report ``api_version`` for opentelemetry-api (None: absent)."""

    def version(name: str) -> str:
        if name != "opentelemetry-api":
            return _real_version(name)
        if api_version is None:
            raise metadata.PackageNotFoundError(name)
        return api_version

    monkeypatch.setattr(metadata, "version", version)


def _frame_context(n: int) -> Context:
    span_context = SpanContext(TRACE_ID + n, SPAN_ID + n, True, TraceFlags(1))
    ctx = trace.set_span_in_context(NonRecordingSpan(span_context), Context())
    return vp.set_frame(FRAME._replace(sequence=n), baggage.set_baggage("site", "dock", ctx))


def _assert_propagation_works(tracing, name: str) -> None:
    contexts = []
    for n in range(4):
        sent = _frame_context(n)
        metadata_: list[tuple[str, str | bytes]] = []
        vp.inject_grpc(metadata_, sent)
        headers: list[tuple[str, bytes]] = []
        vp.inject_mq(headers, vp.extract_grpc(metadata_))
        received = vp.extract_slot(vp.pack_slot(vp.extract_mq(headers)))
        sc = trace.get_current_span(received).get_span_context()
        assert (sc.trace_id, sc.span_id, sc.trace_flags.sampled) == (
            TRACE_ID + n,
            SPAN_ID + n,
            True,
        )
        assert vp.get_frame(received) == FRAME._replace(sequence=n)
        assert baggage.get_all(received) == {"site": "dock"}
        contexts.append(received)
    with vp.batch_span(contexts, name, tracer=tracing.tracer, max_links=3) as batch:
        pass
    assert (batch.linked, batch.chunks, batch.without_context) == (3, 1, 0)
    batch_spans = tracing.named(name) + tracing.named(f"{name} links")  # links to the frames
    linked = [link.context.span_id for span in batch_spans for link in span.links]
    assert linked == [SPAN_ID + n for n in range(4)]
    assert len(tracing.named(f"{name} member")) == 4


def _gate_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "visiontel.propagation"]


def test_past_the_newest_tested_release_the_fast_paths_switch_off(installed_api, caplog, tracing):
    _pretend(installed_api, "1.99.0")
    caplog.set_level(logging.INFO, logger="visiontel.propagation")
    # The first use decides: here a propagation call, not a question to the gate.
    _assert_propagation_works(tracing, "first batch")
    for _ in range(3):
        assert not _otel_private.fast_paths_enabled()
    _assert_propagation_works(tracing, "second batch")
    (record,) = _gate_records(caplog)  # exactly one line, however much ran
    assert record.levelno in (logging.INFO, logging.WARNING)
    message = record.getMessage()
    assert "fast paths off" in message and "1.99.0" in message and "1.30 to 1.45" in message
    assert _otel_private.context_with is _otel_private._public_context_with
    assert _otel_private.new_link is trace.Link


@pytest.mark.parametrize(
    ("api_version", "reason"),
    [
        ("1.46.0", "newer"),
        ("2.0.0", "newer"),
        ("1.29.0", "older"),
        ("0.17b0", "older"),
        ("unknown", "not understood"),
        (None, "no version metadata"),
    ],
)
def test_outside_the_tested_range_the_gate_is_off(installed_api, caplog, api_version, reason):
    _pretend(installed_api, api_version)
    caplog.set_level(logging.INFO, logger="visiontel.propagation")
    assert not _otel_private.fast_paths_enabled()
    assert not _otel_private.fast_paths_enabled()
    (record,) = _gate_records(caplog)
    assert reason in record.getMessage()
    carrier: dict[str, str] = {}
    vp.inject_dict(carrier, _frame_context(1))
    assert vp.get_frame(vp.extract_dict(carrier)) == FRAME._replace(sequence=1)


@pytest.mark.parametrize("api_version", ["1.30.0", "1.35.0", "1.40.0", "1.45.2", "1.45.9rc1"])
def test_inside_the_tested_range_the_gate_is_on_and_quiet(installed_api, caplog, api_version):
    _pretend(installed_api, api_version)
    caplog.set_level(logging.DEBUG, logger="visiontel.propagation")
    assert _otel_private.fast_paths_enabled()
    assert _otel_private.context_with is _otel_private._fast_context_with
    assert _gate_records(caplog) == []


def test_forcing_decides_now_and_none_decides_again(installed_api, caplog):
    caplog.set_level(logging.INFO, logger="visiontel.propagation")
    _otel_private._force(False)
    assert not _otel_private.fast_paths_enabled()
    _otel_private._force(True)
    assert _otel_private.fast_paths_enabled()
    _otel_private._force(None)
    assert _otel_private.fast_paths_enabled()  # the real, tested release
    assert _gate_records(caplog) == []  # forcing is not a reason to log
