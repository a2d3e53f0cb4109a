"""Frame spans as live spans (``visiontel._support.livespans``): where the tracer is the
global SDK provider's and the shared gate is open, ``start_frame`` and ``continue_frame``
build their spans without the SDK's ``start_span``. Exported, they must be the spans the
public API makes: same tree, kind, times, attributes, status, events, resource and scope.
Anything else (a tracer of another provider, a processor acting in ``on_start``, the gate
shut) gets the tracer's own spans."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import visiontel.propagation as vp
from visiontel._support import _otel_private as shared_gate
from visiontel._support.livespans import _LiveSpan

ATTRIBUTES = {"visiontel.model.name": "tinydet", "camera.zone": "gate 3", "frame.scale": 0.5}


class _Global:
    """An SDK provider installed as the global one for a test, with an in-memory exporter."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *processors: SpanProcessor) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource({"service.name": "detector"}))
        for processor in processors:
            self.provider.add_span_processor(processor)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        monkeypatch.setattr(trace, "_TRACER_PROVIDER", self.provider)
        self.tracer = self.provider.get_tracer("visiontel.demo.detector", "1.0")

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def global_sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Global]:
    installed = _Global(monkeypatch)
    yield installed
    installed.provider.shutdown()


def _hops(tracer: Any, fail: bool) -> list[Any]:
    """A source's frame, then a detector's hop on the carried context: the spans seen."""
    seen = []
    carrier: dict[str, str] = {}
    identity = vp.FrameIdentity.now("rtsp://cam-3/main", 41)
    with vp.start_frame("capture", identity, tracer=tracer, attributes=ATTRIBUTES) as span:
        seen.append(span)
        vp.inject_dict(carrier)
    carried = vp.extract_dict(carrier)
    try:
        with vp.continue_frame("detect", carried, tracer=tracer, attributes=ATTRIBUTES) as span:
            seen.append(span)
            with vp.continue_frame("track", carried, kind=SpanKind.INTERNAL, tracer=tracer):
                seen.append(trace.get_current_span())
            sent = vp.start_span("send result", tracer=tracer, kind=SpanKind.CLIENT,
                                 attributes={"rpc.system": "grpc"})  # fmt: skip
            seen.append(sent)
            vp.inject_dict({}, trace.set_span_in_context(sent))
            sent.set_attribute("rpc.grpc.status_code", 0)
            callback = threading.Thread(target=sent.end)  # as in a gRPC call's callback
            callback.start()
            callback.join()
            if fail:
                raise RuntimeError("CUDA out of memory")
    except RuntimeError:
        pass
    return seen


def _exported(spans: list[ReadableSpan]) -> list[tuple[Any, ...]]:
    """What a reader of the exported spans sees, ids replaced by names and places."""
    names = {s.context.span_id: s.name for s in spans}
    traces = {s.context.trace_id: index for index, s in enumerate(spans)}
    return [
        (
            s.name,
            s.kind,
            traces[s.context.trace_id],
            names.get(s.parent.span_id, "not exported") if s.parent else None,
            s.parent.is_remote if s.parent else None,
            sorted((k, v) for k, v in (s.attributes or {}).items() if k != "visiontel.frame.age"),
            "visiontel.frame.age" in (s.attributes or {}),
            (s.status.status_code, s.status.description),
            [(e.name, dict(e.attributes or {}).get("exception.message")) for e in s.events],
            dict(s.resource.attributes),
            s.instrumentation_scope,
            s.start_time is not None and s.end_time is not None and s.start_time <= s.end_time,
        )
        for s in sorted(spans, key=lambda s: s.start_time or 0)
    ]


@pytest.mark.parametrize("fail", [False, True], ids=["ok", "raises"])
@pytest.mark.parametrize("own_tracer", [False, True], ids=["given tracer", "package tracer"])
def test_live_frame_spans_export_as_the_public_api_makes_them(
    monkeypatch: pytest.MonkeyPatch, fail: bool, own_tracer: bool
) -> None:
    runs = []
    for public_api in (False, True):
        shared_gate.use_public_api(public_api)
        try:
            installed = _Global(monkeypatch)  # a provider of its own: asked afresh
            spans = _hops(None if own_tracer else installed.tracer, fail)
        finally:
            shared_gate.use_public_api(False)
        assert all(isinstance(span, _LiveSpan) is not public_api for span in spans)
        assert sorted(s.name for s in installed.spans()) == [
            "capture", "detect", "send result", "track"]  # fmt: skip
        runs.append(_exported(installed.spans()))
        installed.provider.shutdown()
    fast, public = runs
    assert fast == public
    kinds = {row[0]: row[1] for row in fast}
    assert kinds == {"capture": SpanKind.PRODUCER, "detect": SpanKind.CONSUMER,
                     "track": SpanKind.INTERNAL, "send result": SpanKind.CLIENT}  # fmt: skip
    send = next(row for row in fast if row[0] == "send result")
    assert send[3:5] == ("detect", False)  # under the current span
    assert send[5] == [("rpc.grpc.status_code", 0), ("rpc.system", "grpc")]
    detect = next(row for row in fast if row[0] == "detect")
    assert detect[3:5] == ("capture", True)  # under the carried (remote) capture span
    if fail:
        assert detect[7][0] is StatusCode.ERROR and detect[8][0][0] == "exception"


def test_a_tracer_of_another_provider_keeps_its_own_spans(global_sdk: _Global) -> None:
    exporter = InMemorySpanExporter()
    other = TracerProvider()
    other.add_span_processor(SimpleSpanProcessor(exporter))
    spans = _hops(other.get_tracer("elsewhere"), fail=False)
    assert not any(isinstance(span, _LiveSpan) for span in spans)
    assert len(exporter.get_finished_spans()) == 4 and global_sdk.spans() == []


def test_a_processor_acting_on_start_sees_every_frame_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Counting(SpanProcessor):
        def __init__(self) -> None:
            self.started: list[str] = []

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            self.started.append(span.name)

    counting = Counting()
    installed = _Global(monkeypatch, counting)
    spans = _hops(installed.tracer, fail=False)
    assert not any(isinstance(span, _LiveSpan) for span in spans)  # the gate shut
    assert sorted(counting.started) == ["capture", "detect", "send result", "track"]
    installed.provider.shutdown()


@pytest.mark.parametrize("public_api", [False, True], ids=["context slot", "public API"])
def test_a_frame_left_in_another_context_is_logged_as_the_api_logs_it(
    global_sdk: _Global, caplog: pytest.LogCaptureFixture, public_api: bool
) -> None:
    """Entered in one ``contextvars`` context and left in another (a callback run
    elsewhere), the scope's tokens cannot be reset: the API logs each failure, nothing
    raises, and the span still ends."""
    shared_gate.use_public_api(public_api)
    try:
        carried = vp.extract_dict({})
        scope = vp.continue_frame("detect", carried, tracer=global_sdk.tracer)
        span = contextvars.copy_context().run(scope.__enter__)
        with caplog.at_level(logging.ERROR, logger="opentelemetry.context"):
            scope.__exit__(None, None, None)
    finally:
        shared_gate.use_public_api(False)
    assert isinstance(span, _LiveSpan) is not public_api
    failures = [r for r in caplog.records if "Failed to detach context" in r.getMessage()]
    assert len(failures) == 2  # the span's context, then the frame's
    assert [s.name for s in global_sdk.spans()] == ["detect"]
    assert trace.get_current_span() is trace.INVALID_SPAN
