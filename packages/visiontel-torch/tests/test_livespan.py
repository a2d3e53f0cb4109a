"""Live spans (visiontel-torch's cheap stage and root spans) against the SDK's own spans."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

import visiontel.torch as vt
from visiontel._support.livespans import LiveSpans, _LiveSpan
from visiontel.torch import _runtime
from visiontel.torch._otel_private import TORCH_SCOPE
from visiontel.torch.version import SCHEMA_URL, __version__

_ATTRIBUTES = {"visiontel.stage": "preprocess", "n": 3, "ratio": 0.5, "cold": False}


class _Pipeline:
    def __init__(self, **provider_args: Any) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(**provider_args)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.sdk_tracer = self.provider.get_tracer("visiontel.torch", __version__, SCHEMA_URL)
        self.spans = LiveSpans(self.provider, self.sdk_tracer, TORCH_SCOPE)

    @contextmanager
    def parent(self) -> Iterator[trace.Span]:
        with self.provider.get_tracer("test").start_as_current_span("frame") as span:
            yield span

    def finished(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]


def _comparable(span: ReadableSpan, timeless: bool) -> dict[str, Any]:
    exported = json.loads(span.to_json())
    exported["context"].pop("span_id")
    if timeless:  # ended by the clock: compare what happened, not when
        exported.pop("end_time")
        for event in exported["events"]:
            event.pop("timestamp")
    return {
        **exported,
        "scope": (span.instrumentation_scope.name, span.instrumentation_scope.version),
        "schema": span.instrumentation_scope.schema_url,
        "dropped_attributes": span.dropped_attributes,
    }


def _both_ways(
    pipeline: _Pipeline, use: Callable[[trace.Span], None], *, timeless: bool = False
) -> None:
    """``use`` on a live span and on an SDK span started alike; both exports must agree."""
    with pipeline.parent():
        live = pipeline.spans.start("work", _ATTRIBUTES, start_time=1_000)
        sdk = pipeline.sdk_tracer.start_span("work", attributes=_ATTRIBUTES, start_time=1_000)
        assert type(live) is _LiveSpan and isinstance(sdk, Span)
        use(live)
        use(sdk)
    live_export, sdk_export = (
        _comparable(s, timeless) for s in pipeline.exporter.get_finished_spans()[:2]
    )
    assert live_export == sdk_export


def test_plain_attributes_and_end_match_the_sdk() -> None:
    def use(span: trace.Span) -> None:
        span.set_attribute("visiontel.detections", 7)
        span.set_attributes({"visiontel.batch.size": 1, "device": "cpu"})
        span.end(end_time=5_000)
        span.set_attribute("after.end", 1)  # ignored by both

    _both_ways(_Pipeline(), use)


def test_homogeneous_sequences_stay_live_and_match_the_sdk() -> None:
    def use(span: trace.Span) -> None:
        span.set_attribute("visiontel.input.shapes", ["1x3x240x320", "1x3x240x320"])
        span.set_attribute("boxes", (3, 0, 7))
        span.set_attribute("empty", [])
        if type(span) is _LiveSpan:
            assert span._sdk_span is None  # still live: nothing needed the SDK's checks
        span.end(end_time=5_000)

    _both_ways(_Pipeline(), use)


def test_everything_else_is_done_by_a_promoted_sdk_span() -> None:
    failure = ValueError("bad frame")
    link = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1))

    def use(span: trace.Span) -> None:
        span.set_attribute("mixed", [1, "a"])  # a mixed sequence: the SDK drops it
        span.set_attribute("dropped", object())  # type: ignore[arg-type]  # the SDK drops it
        span.add_event("queued", {"depth": 2}, timestamp=2_000)
        span.record_exception(failure, {"extra": "x"}, timestamp=3_000, escaped=True)
        span.set_status(Status(StatusCode.ERROR, "ValueError: bad frame"))
        span.add_link(link, {"why": "batch"})
        span.update_name("work renamed")
        span.end(end_time=5_000)

    _both_ways(_Pipeline(), use)


def test_attribute_limits_match_the_sdk() -> None:
    limits = SpanLimits(max_span_attributes=3, max_span_attribute_length=4)

    def use(span: trace.Span) -> None:
        span.set_attribute("long", "abcdefgh")
        span.end(end_time=5_000)

    _both_ways(_Pipeline(span_limits=limits), use)


def test_span_as_context_manager_records_the_failure_like_the_sdk() -> None:
    def use(span: trace.Span) -> None:
        with pytest.raises(KeyError), span:
            raise KeyError("box")

    pipeline = _Pipeline()
    _both_ways(pipeline, use, timeless=True)
    (live, _) = pipeline.finished("work")
    assert live.status.status_code is StatusCode.ERROR
    assert [event.name for event in live.events] == ["exception"]


def test_a_live_span_ends_once() -> None:
    pipeline = _Pipeline()
    with pipeline.parent() as parent:
        span = pipeline.spans.start("work", {})
        span.end()
        span.end()
        assert not span.is_recording()
        span.add_event("late")
    (only,) = pipeline.finished("work")
    assert only.parent is not None and only.parent.span_id == parent.get_span_context().span_id
    assert len(only.events) == 0  # the late event was ignored


class _SeesStarts(SpanProcessor):
    def __init__(self) -> None:
        self.started: list[str] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.started.append(span.name)


def test_a_processor_that_acts_on_start_gets_sdk_spans_even_when_added_later() -> None:
    pipeline = _Pipeline()
    with pipeline.parent():
        assert type(pipeline.spans.start("before", {})) is _LiveSpan
        watcher = _SeesStarts()
        pipeline.provider.add_span_processor(watcher)
        span = pipeline.spans.start("after", {})
        span.end()
    assert type(span) is not _LiveSpan
    assert watcher.started == ["after"]
    assert len(pipeline.finished("after")) == 1


def test_a_batch_or_simple_processor_added_later_keeps_spans_live_and_gets_them() -> None:
    pipeline = _Pipeline()
    later = InMemorySpanExporter()
    with pipeline.parent():
        pipeline.spans.start("before", {}).end()
        pipeline.provider.add_span_processor(SimpleSpanProcessor(later))
        span = pipeline.spans.start("after", {})
        span.end()
    assert type(span) is _LiveSpan
    assert [s.name for s in later.get_finished_spans()] == ["after", "frame"]


@pytest.mark.parametrize(
    "sampler",
    [
        ParentBased(ALWAYS_ON, local_parent_sampled=ALWAYS_OFF),  # drops local children
        ParentBased(ALWAYS_ON, local_parent_sampled=TraceIdRatioBased(0.0)),
    ],
)
def test_a_sampler_that_may_decide_otherwise_is_asked(sampler: Any) -> None:
    pipeline = _Pipeline(sampler=sampler)
    with pipeline.parent():
        span = pipeline.spans.start("work", _ATTRIBUTES)
        span.end()
    assert not span.is_recording()
    assert pipeline.finished("work") == []


def test_remote_unsampled_and_missing_parents_follow_the_sampler() -> None:
    pipeline = _Pipeline(sampler=ParentBased(ALWAYS_OFF))
    with pipeline.parent():  # the root is dropped, so its children are too
        unsampled = pipeline.spans.start("unsampled", {})
    remote = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(remote)):  # a sampled remote parent: kept, live
        from_remote = pipeline.spans.start("from remote", {}, kind=trace.SpanKind.CONSUMER)
        assert type(from_remote).__name__ == "_LiveSpanOfKind" and from_remote.is_recording()
        from_remote.end()
    orphan = pipeline.spans.start("orphan", {})
    assert not unsampled.is_recording()
    (exported,) = pipeline.finished("from remote")
    assert exported.parent == remote and exported.kind is trace.SpanKind.CONSUMER
    assert exported.context.trace_id == remote.trace_id
    assert not orphan.is_recording()  # a root: the sampler's ParentBased(ALWAYS_OFF) drops it


def test_a_provider_that_is_not_the_sdks_gets_its_own_spans() -> None:
    spans = LiveSpans(trace.NoOpTracerProvider(), trace.NoOpTracer(), TORCH_SCOPE)
    pipeline = _Pipeline()
    with pipeline.parent():
        span = spans.start("work", _ATTRIBUTES)
    assert type(span) is not _LiveSpan and not span.is_recording()


def test_stage_spans_are_live_and_take_user_additions() -> None:
    pipeline = _Pipeline()
    _runtime.set_default_runtime(_runtime.Runtime(pipeline.provider, None))
    try:
        with pipeline.parent(), vt.stage("preprocess", model="det", attributes={"cam": "gate-3"}):
            current = trace.get_current_span()
            assert type(current) is _LiveSpan
            current.set_attribute("frame.width", 640)
            current.add_event("decoded")
    finally:
        _runtime.set_default_runtime(None)
    (exported,) = pipeline.finished("preprocess")
    assert dict(exported.attributes or {}) == {
        "visiontel.stage": "preprocess",
        "cam": "gate-3",
        "visiontel.model.name": "det",
        "frame.width": 640,
    }
    assert [event.name for event in exported.events] == ["decoded"]


def test_a_forward_root_span_stays_live_with_its_input_description() -> None:
    import torch

    seen: list[trace.Span] = []

    class Probe(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            seen.append(trace.get_current_span())
            return images.sum(dim=(1, 2, 3))

    pipeline = _Pipeline()
    model = vt.instrument_model(
        Probe(), name="probe", granularity="model", tracer_provider=pipeline.provider
    )
    try:
        with pipeline.parent(), torch.inference_mode():
            model(torch.zeros(2, 3, 8, 8))
    finally:
        vt.uninstrument_model(model)
    (root,) = seen
    assert type(root) is _LiveSpan and root._sdk_span is None
    (exported,) = pipeline.finished("inference probe")
    assert exported.attributes is not None
    assert exported.attributes["visiontel.batch.size"] == 2
    assert exported.attributes["visiontel.input.shapes"] == ("2x3x8x8",)
