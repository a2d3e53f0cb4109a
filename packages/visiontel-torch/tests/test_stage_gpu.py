"""``stage(..., device=<cuda device>)``: GPU time through pooled CUDA events and the resolver.

The production ``CudaEventSource``, resolver and ``stage`` run against the strict recording
stand-in for ``torch.cuda`` from ``cuda_standin.py`` (any machine), and against a real GPU
with recorders around every wait (skipped without one). Which thread ends a span is read
from the exporter: the simple span processor exports on the thread that ends the span, and
a plain SDK set-up keeps the live-span fast path that stages use (a processor of our own
would turn it off).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
from cuda_standin import (
    RESOLVER_THREAD,
    RealCuda,
    StandInGpu,
    assert_forward_thread_never_waits,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import visiontel.torch as vt
from visiontel.torch import _model, _runtime, _timing, stage
from visiontel.torch._timing import CudaEventSource

from torch_support import Telemetry, TinyDetector

CUDA0 = torch.device("cuda", 0)
DURATION = "visiontel.inference.duration"


class ThreadRecordingExporter(InMemorySpanExporter):
    """Also notes the thread that ended each span (``SimpleSpanProcessor`` exports there)."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: dict[str, list[str]] = {}

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            self.threads.setdefault(span.name, []).append(threading.current_thread().name)
        return super().export(spans)


class GpuTelemetry(Telemetry):
    exporter: ThreadRecordingExporter

    def finished_now(self) -> list[str]:
        """Names of the spans ended so far, without waiting for the resolver."""
        return [span.name for span in self.exporter.get_finished_spans()]

    def stage_points(self, name: str) -> list[Any]:
        return [
            point
            for point in self.metric_points(DURATION)
            if point.attributes.get("visiontel.stage") == name
        ]


@pytest.fixture
def stage_telemetry() -> Iterator[GpuTelemetry]:
    """Stages record into these providers (they use the default runtime)."""
    exporter = ThreadRecordingExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    _runtime.set_default_runtime(_runtime.Runtime(tracer_provider, meter_provider))
    yield GpuTelemetry(tracer_provider, meter_provider, exporter, reader)
    vt.flush(10.0)
    _runtime.set_default_runtime(None)
    for model in _model.all_instrumented():
        vt.uninstrument_model(model)


def _gpu_work(gpu: StandInGpu | RealCuda) -> None:
    """Something queued on the current stream (the stand-in queues only events)."""
    if isinstance(gpu, RealCuda):
        x = torch.randn(64, 64, device=CUDA0)
        _ = x @ x


def _has_gpu_times(span: ReadableSpan) -> bool:
    attributes = span.attributes or {}
    return "visiontel.gpu.duration" in attributes and "visiontel.gpu.start_delay" in attributes


def _only(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span


@pytest.mark.parametrize("parent", ["root", "child"])
def test_gpu_stage_gets_gpu_times_and_is_ended_by_the_resolver(
    gpu: StandInGpu | RealCuda, stage_telemetry: GpuTelemetry, parent: str
) -> None:
    telemetry = stage_telemetry
    tracer = telemetry.tracer_provider.get_tracer("test")
    before_ns = time.time_ns()
    if parent == "root":  # an SDK span (no parent: no live-span fast path)
        with stage("preprocess", model="det", device=CUDA0):
            _gpu_work(gpu)
    else:  # "child": a live span under the frame's span
        with tracer.start_as_current_span("frame"), stage("preprocess", device=CUDA0):
            _gpu_work(gpu)
    after_ns = time.time_ns()
    if isinstance(gpu, StandInGpu):
        # its events have not completed: the span is still open, waiting for the resolver
        time.sleep(0.02)
        assert "preprocess" not in telemetry.finished_now()
    completed = gpu.finish()
    spans = telemetry.spans()
    span = _only(spans, "preprocess")
    assert telemetry.exporter.threads["preprocess"] == [RESOLVER_THREAD]
    assert_forward_thread_never_waits(gpu.log, threading.get_ident())
    assert _has_gpu_times(span)
    # ended later, but at the block's end: the time the resolver waited is not in it
    assert before_ns <= span.start_time <= span.end_time <= after_ns + 1_000_000
    timing = gpu.log.events(calibration=False)
    assert len(timing) == 2  # one pooled event at entry, one at exit
    if isinstance(gpu, StandInGpu):  # exact: the scripted clocks are the truth
        assert span.attributes["visiontel.gpu.duration"] == pytest.approx(0.002)
        truth_ns = completed[0].completed[1]
        delay = span.attributes["visiontel.gpu.start_delay"]
        assert delay == pytest.approx((truth_ns - span.start_time) / 1e9, abs=1e-9)
    else:
        assert span.attributes["visiontel.gpu.duration"] >= 0
        assert span.attributes["visiontel.gpu.start_delay"] > -1e-3
    if parent != "root":
        frame = _only(spans, "frame")
        assert span.parent is not None and span.parent.span_id == frame.context.span_id
        assert telemetry.exporter.threads["frame"] == ["MainThread"]
    (point,) = telemetry.stage_points("preprocess")
    assert point.count == 1


def test_gpu_stage_events_return_to_the_pool(
    gpu: StandInGpu | RealCuda, stage_telemetry: GpuTelemetry
) -> None:
    timer = stage("preprocess", device=CUDA0)  # one instance, entered again and again
    with timer:
        _gpu_work(gpu)
    gpu.finish()
    assert len(stage_telemetry.spans()) == 1
    first = {id(event) for event in gpu.log.events(calibration=False)}
    assert len(first) == 2
    records = len(gpu.log.calls("Event.record"))
    for _ in range(3):
        with timer:
            _gpu_work(gpu)
        gpu.finish()
        assert vt.flush(10.0)
    spans = stage_telemetry.spans()
    assert len(spans) == 4 and all(_has_gpu_times(span) for span in spans)
    # six more records, all on the two events released after the first stage
    assert len(gpu.log.calls("Event.record")) == records + 6
    assert {id(event) for event in gpu.log.events(calibration=False)} == first
    source = _timing._cuda_sources[0]
    assert type(source) is CudaEventSource
    again = [source.acquire(), source.acquire()]
    assert {id(event) for event in again} == first  # both are back in the pool
    source.release(again)
    assert_forward_thread_never_waits(gpu.log, threading.get_ident())


@pytest.mark.parametrize("capacity", [0, 1])
def test_an_exhausted_pool_skips_gpu_time_only(
    gpu: StandInGpu | RealCuda, stage_telemetry: GpuTelemetry, capacity: int
) -> None:
    """No event at entry, or none left at exit: the stage is timed on the host alone."""
    source = CudaEventSource(0, capacity=capacity)
    with stage("preprocess", device=CUDA0, _event_source=source):
        _gpu_work(gpu)
    # nothing to wait for: ended on the caller's thread, at once
    assert stage_telemetry.finished_now() == ["preprocess"]
    assert stage_telemetry.exporter.threads["preprocess"] == ["MainThread"]
    gpu.finish()
    (span,) = stage_telemetry.spans()
    assert not any(key.startswith("visiontel.gpu.") for key in span.attributes or {})
    assert len(stage_telemetry.stage_points("preprocess")) == 1
    used = gpu.log.events(calibration=False)
    assert len(used) == capacity  # the entry event, when there was one, and no other
    if capacity:
        (event,) = used
        assert source.acquire() is event  # released, not leaked
    assert gpu.log.events(calibration=True) == []  # no resolver work at all
    assert_forward_thread_never_waits(gpu.log, threading.get_ident())


def test_events_held_by_a_stage_in_flight_exhaust_the_pool(
    standin: StandInGpu, stage_telemetry: GpuTelemetry
) -> None:
    source = CudaEventSource(0, capacity=2)
    with stage("preprocess", device=CUDA0, _event_source=source):
        pass
    with stage("postprocess", device=CUDA0, _event_source=source):
        pass  # the first stage's two events are still queued on the device
    assert stage_telemetry.finished_now() == ["postprocess"]
    standin.finish()
    spans = {span.name: span for span in stage_telemetry.spans()}
    assert _has_gpu_times(spans["preprocess"])
    assert not _has_gpu_times(spans["postprocess"])
    assert stage_telemetry.exporter.threads == {
        "postprocess": ["MainThread"],
        "preprocess": [RESOLVER_THREAD],
    }
    with stage("postprocess", device=CUDA0, _event_source=source):
        pass  # the resolver gave them back
    standin.finish()
    assert _has_gpu_times(stage_telemetry.spans()[-1])
    assert len(standin.log.events(calibration=False)) == 2
    assert_forward_thread_never_waits(standin.log, threading.get_ident())


@pytest.mark.parametrize("metric", [True, False])
def test_metric_false_keeps_the_span_and_gpu_time_but_records_no_duration(
    gpu: StandInGpu | RealCuda, stage_telemetry: GpuTelemetry, metric: bool
) -> None:
    with stage("inference", model="det", device=CUDA0, metric=metric):
        _gpu_work(gpu)
    with stage("nms", model="det"):  # another stage still records its point
        pass
    gpu.finish()
    spans = stage_telemetry.spans()
    assert _has_gpu_times(_only(spans, "inference"))
    points = stage_telemetry.stage_points("inference")
    if metric:
        (point,) = points
        assert point.attributes["visiontel.model.name"] == "det"
        # the point's exemplar points at the stage span
        (exemplar,) = point.exemplars
        assert exemplar.span_id == _only(spans, "inference").context.span_id
    else:
        assert points == []
    assert len(stage_telemetry.stage_points("nms")) == 1
    assert_forward_thread_never_waits(gpu.log, threading.get_ident())


@pytest.mark.parametrize("device", [torch.device("cpu"), None], ids=["cpu", "none"])
def test_a_cpu_device_or_none_records_no_events(
    standin: StandInGpu, stage_telemetry: GpuTelemetry, device: torch.device | None
) -> None:
    with stage("preprocess", device=device):
        pass
    assert stage_telemetry.finished_now() == ["preprocess"]  # ended on exit, here
    (span,) = stage_telemetry.spans()
    assert not any(key.startswith("visiontel.gpu.") for key in span.attributes or {})
    assert stage_telemetry.exporter.threads["preprocess"] == ["MainThread"]
    assert _timing._cuda_sources == {}
    assert standin.log.calls("Event.record", "cuda.current_device", "Stream()") == []
    assert len(stage_telemetry.stage_points("preprocess")) == 1


def test_a_model_forward_inside_a_gpu_stage_nests_under_it(
    gpu: StandInGpu | RealCuda, stage_telemetry: GpuTelemetry
) -> None:
    telemetry = stage_telemetry
    model, images = gpu.on_device(TinyDetector(), torch.randn(1, 3, 8, 8))
    model = telemetry.instrument(model, name="det", granularity="model")
    with stage("inference", model="det", device=CUDA0, metric=False):
        model(images)
    gpu.finish()
    spans = telemetry.spans()
    outer = _only(spans, "inference")
    forward = _only(spans, "inference det")
    assert forward.parent is not None and forward.parent.span_id == outer.context.span_id
    assert forward.context.trace_id == outer.context.trace_id
    assert _has_gpu_times(outer) and _has_gpu_times(forward)
    assert telemetry.exporter.threads["inference"] == [RESOLVER_THREAD]
    assert len(gpu.log.events(calibration=False)) == 4  # the stage's pair, the forward's pair
    assert_forward_thread_never_waits(gpu.log, threading.get_ident())
    if isinstance(gpu, StandInGpu):  # stage entry, forward start, forward end, stage exit
        assert outer.attributes["visiontel.gpu.duration"] == pytest.approx(0.006)
        assert forward.attributes["visiontel.gpu.duration"] == pytest.approx(0.002)
    assert [p.attributes["visiontel.stage"] for p in telemetry.metric_points(DURATION)] == [
        "inference"
    ]  # the forward's own point; the stage (metric=False) adds none


@pytest.mark.parametrize("device", ["cuda:0", "cuda"])
def test_a_device_given_as_text_is_timed_too(
    standin: StandInGpu, stage_telemetry: GpuTelemetry, device: str
) -> None:
    """``stage(device="cuda:0")``, as a predictor's ``args.device`` often reads."""
    with stage("preprocess", device=device):
        pass
    standin.finish()
    span = _only(stage_telemetry.spans(), "preprocess")
    assert _has_gpu_times(span)
    assert list(_timing._cuda_sources) == [0]
    assert len(standin.log.events(calibration=False)) == 2
