"""The one gate in front of the SDK fast paths (``_otel_private``), and what it guards.

The same workload (stages around an instrumented model at layer granularity, under a frame
span, one forward failing) runs through the fast paths (ended inline with a simple
processor, and as later work with a batch processor) and through the public API with the
gate shut. The spans must be the same tree with the same attributes, links, events,
status, resource and scope, and the metric points the same. Then each reason to shut the
gate is shown to shut it: a processor that acts in ``on_start``, an SDK release outside the
tested range, and a resource changed after ``fork``. This file runs on every OpenTelemetry
release the nox matrix covers.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import pytest
import torch
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

import visiontel.torch as vt
from visiontel._support import _otel_private as shared_gate
from visiontel._support.livespans import _LiveSpan
from visiontel.torch import _otel_private, _runtime

from torch_support import TinyDetector, data_points


class _Boom(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("bad input")


class _CopiesBaggage(SpanProcessor):
    """Like contrib's BaggageSpanProcessor: every span takes the baggage in ``on_start``."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.started.append(span.name)
        for key, value in baggage.get_all(parent_context).items():
            span.set_attribute(key, str(value))


@pytest.fixture(autouse=True)
def _gate_reset() -> Iterator[None]:
    yield
    _otel_private._use_public_api(False)
    _otel_private._reset_version_check()


def _workload(processor: SpanProcessor, *extra: SpanProcessor) -> tuple[list[Any], list[Any]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "gate"}))
    for added in (*extra, processor(exporter) if isinstance(processor, type) else processor):
        provider.add_span_processor(added)
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    runtime = _runtime.Runtime(provider, meters)
    _runtime.set_default_runtime(runtime)
    model = vt.instrument_model(
        TinyDetector(),
        name="det",
        granularity="layer",
        tracer_provider=provider,
        meter_provider=meters,
    )
    failing = vt.instrument_model(
        _Boom(), name="boom", tracer_provider=provider, meter_provider=meters
    )
    token = otel_context.attach(baggage.set_baggage("camera", "gate-3"))
    try:
        tracer = provider.get_tracer("app")
        postprocess = vt.stage("postprocess", model="det")  # one object entered every frame
        with torch.inference_mode():
            for frame in range(3):
                with tracer.start_as_current_span("frame", attributes={"frame": frame}) as span:
                    span.add_link(span.get_span_context(), {"self": True})
                    with vt.stage("preprocess", model="det", attributes={"camera": "gate-3"}):
                        images = torch.randn(2, 3, 16, 16)
                    with vt.stage("inference"):
                        model(images)
                    with vt.stage("nms") as nms:
                        trace.get_current_span().add_event("kept", {"boxes": 3})
                        del nms
                    with postprocess:
                        pass
            with pytest.raises(RuntimeError), vt.stage("broken"):
                failing(torch.zeros(1, 3, 4, 4))
        assert vt.flush(10)
        provider.force_flush()
        points = _points(reader)
    finally:
        otel_context.detach(token)
        vt.uninstrument_model(model)
        vt.uninstrument_model(failing)
        _runtime.set_default_runtime(None)
    return _tree(list(exporter.get_finished_spans())), points


def _tree(spans: list[ReadableSpan]) -> list[Any]:
    by_id = {s.context.span_id: s for s in spans}
    rows = []
    for span in spans:
        exported = json.loads(span.to_json())
        for key in ("context", "parent_id", "start_time", "end_time"):
            exported.pop(key)
        for event in exported["events"]:
            event.pop("timestamp")
        for link in exported["links"]:
            link.pop("context")
        parent = by_id.get(span.parent.span_id) if span.parent else None
        exported["parent_name"] = parent.name if parent else None
        exported["scope"] = (span.instrumentation_scope.name, span.instrumentation_scope.version)
        exported["sampled"] = span.context.trace_flags.sampled
        assert span.end_time is not None and span.start_time is not None
        assert span.start_time <= span.end_time
        if parent is not None:
            assert parent.context.trace_id == span.context.trace_id
        rows.append(json.dumps(exported, sort_keys=True))
    return sorted(rows)


def _points(reader: InMemoryMetricReader) -> list[Any]:
    points = []
    for name, point in data_points(reader):
        count = getattr(point, "count", None)
        value = getattr(point, "value", None)
        exemplars = len(getattr(point, "exemplars", ()) or ())
        attributes = sorted(dict(point.attributes).items())
        if name.endswith("duration"):  # times differ run to run
            points.append((name, attributes, count, exemplars > 0))
        else:
            points.append((name, attributes, count, value))
    return sorted(points, key=repr)


def test_fast_paths_and_public_api_give_the_same_spans_and_points() -> None:
    fast_inline = _workload(SimpleSpanProcessor)
    fast_later = _workload(BatchSpanProcessor)
    _otel_private._use_public_api(True)
    public = _workload(SimpleSpanProcessor)
    assert fast_inline == public
    assert fast_later == public
    names = {json.loads(row)["name"] for row in public[0]}
    assert {"frame", "preprocess", "inference det", "nms", "broken", "inference boom"} <= names
    assert len(public[0]) > 30  # layer spans too


def test_a_processor_acting_on_start_shuts_the_gate_and_sees_every_span() -> None:
    watcher = _CopiesBaggage()
    spans, _ = _workload(SimpleSpanProcessor, watcher)
    rows = [json.loads(row) for row in spans]
    assert len(watcher.started) == len(rows)
    assert all(row["attributes"].get("camera") == "gate-3" for row in rows)  # layer spans too
    provider = TracerProvider()
    provider.add_span_processor(_CopiesBaggage())
    assert _otel_private.fast_path_for(provider) is None


def test_an_sdk_outside_the_tested_range_shuts_the_gate_logs_once_and_works(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    expected = _workload(SimpleSpanProcessor)
    newest = _otel_private.TESTED_SDK[1]
    monkeypatch.setattr(metadata, "version", lambda name: f"{newest[0]}.{newest[1] + 1}.0")
    _otel_private._reset_version_check()
    with caplog.at_level(logging.INFO, logger="visiontel"):  # the shared gate logs there
        assert _otel_private.fast_path_for(TracerProvider()) is None
        outside = _workload(SimpleSpanProcessor)
    notes = [r for r in caplog.records if "outside the releases" in r.getMessage()]
    assert len(notes) == 1
    assert outside == expected
    provider = TracerProvider()  # an SDK provider whose spans would otherwise be live
    spans = _runtime.Runtime(provider, None).spans
    with provider.get_tracer("app").start_as_current_span("frame"):
        assert type(spans.start("work", {})) is not _LiveSpan


def test_the_installed_sdk_is_inside_the_tested_range() -> None:
    """CI's matrix must move TESTED_SDK when it moves: this fails on an untested release."""
    assert _otel_private.sdk_version_supported()
    assert _otel_private.fast_path_for(TracerProvider()) is not None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_spans_in_a_forked_child_carry_the_childs_resource() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "forked"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _runtime.set_default_runtime(_runtime.Runtime(provider, None))
    try:
        with provider.get_tracer("app").start_as_current_span("warm"), vt.stage("before"):
            pass
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its spans' resources, then leave without cleanup
            try:
                exporter.clear()
                with provider.get_tracer("app").start_as_current_span("frame"), vt.stage("after"):
                    pass
                found = {s.name: dict(s.resource.attributes) for s in exporter.get_finished_spans()}
                found["provider"] = dict(provider.resource.attributes)
                os.write(write, json.dumps(found, default=str).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            child = json.loads(pipe.read())
        os.waitpid(pid, 0)
    finally:
        _runtime.set_default_runtime(None)
    assert child["after"] == child["frame"] == child["provider"]
    if "process.pid" in child["provider"]:  # SDKs that refresh the resource after fork
        assert child["after"]["process.pid"] == pid != os.getpid()


def test_a_full_batch_queue_gets_each_span_through_its_own_on_end() -> None:
    """Layer spans go into a batch processor's queue at once only when all of them fit;
    otherwise each goes through the processor's own on_end (its drop rules and logging)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    processor = BatchSpanProcessor(
        exporter, max_queue_size=8, max_export_batch_size=8, schedule_delay_millis=60_000
    )
    provider.add_span_processor(processor)
    path = _otel_private.fast_path_for(provider)
    assert path is not None and path.batched
    if path.on_end_many is None:  # only an SDK whose processor keeps its queue elsewhere
        assert not hasattr(processor, "_batch_processor")
        processor.shutdown()
        return
    one_by_one: list[str] = []
    own_on_end = processor.on_end

    def counted(span: ReadableSpan) -> None:
        one_by_one.append(span.name)
        own_on_end(span)

    processor.on_end = counted  # type: ignore[method-assign]
    context = trace.SpanContext(7, 7, is_remote=False, trace_flags=trace.TraceFlags(1))
    few = [path.finished_span(f"fits {i}", context, None, {}, 1, 2) for i in range(4)]
    many = [path.finished_span(f"over {i}", context, None, {}, 1, 2) for i in range(20)]
    path.on_end_many(few)
    assert one_by_one == []
    assert len(processor._batch_processor._queue) == 4
    path.on_end_many(many)  # 4 queued + 20 > 8
    assert one_by_one == [f"over {i}" for i in range(20)]
    # one span at a time (a frame's or a stage's span): straight into the queue while it
    # has room, through the processor's own on_end once it is full or shut down
    one_by_one.clear()
    processor._batch_processor._queue.clear()
    singles = [path.finished_span(f"one {i}", context, None, {}, 1, 2) for i in range(10)]
    for span in singles:
        path.on_end(span)
    assert one_by_one == ["one 8", "one 9"]
    # the SDK's own on_end made room by dropping the oldest, as it does
    queued = [s.name for s in processor._batch_processor._queue]
    assert queued == [f"one {i}" for i in range(9, 1, -1)]
    processor.shutdown()
    path.on_end(singles[0])
    assert one_by_one == ["one 8", "one 9", "one 0"]


def test_sdk_span_metrics_that_count_shut_the_gate() -> None:
    """SDK releases that count their own spans (``otel.sdk.span.started``) count ours too:
    with a meter provider behind those counters the gate is shut and the tracer used."""
    reader = InMemoryMetricReader()
    try:
        provider = TracerProvider(meter_provider=MeterProvider(metric_readers=[reader]))
    except TypeError:  # a release without the SDK's own span metrics: nothing to count
        assert _otel_private.fast_path_for(TracerProvider()) is not None
        return
    tracer = provider.get_tracer("visiontel.torch")
    if shared_gate._span_counters_waiting(tracer) == []:  # created but never counting
        assert _otel_private.fast_path_for(provider) is not None
        return
    assert _otel_private.fast_path_for(provider) is None
    _runtime.set_default_runtime(_runtime.Runtime(provider, None))
    try:
        with provider.get_tracer("app").start_as_current_span("frame"), vt.stage("work"):
            pass
    finally:
        _runtime.set_default_runtime(None)
    data = reader.get_metrics_data()
    started = [
        point.value
        for resource_metrics in data.resource_metrics
        for scope in resource_metrics.scope_metrics
        for metric in scope.metrics
        if metric.name == "otel.sdk.span.started"
        for point in metric.data.data_points
    ]
    assert sum(started) == 2  # the frame and the stage


def test_queued_work_keeps_no_input_or_output_tensor_alive() -> None:
    """With batch processors a forward's end waits in a queue: it must hold shapes and
    counts, never the tensors (on a GPU that would be device memory held for 64 frames)."""
    import gc
    import weakref

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    model = vt.instrument_model(
        torch.nn.Sequential(torch.nn.Linear(4, 6)), granularity="layer", tracer_provider=provider
    )
    try:
        with torch.inference_mode():
            images = torch.randn(3, 4)
            output = model(images)
        inputs_left, output_left = weakref.ref(images), weakref.ref(output)
        assert _runtime.runtime_for(provider, None).resolver._later  # queued, not yet run
        del images, output
        gc.collect()
        assert inputs_left() is None and output_left() is None
        assert vt.flush(10)
    finally:
        vt.uninstrument_model(model)


class _SequentialIds(IdGenerator):
    """Trace ids whose low 64 bits walk through the ratio's range: the same ids, in the same
    order, for the fast path and the public API, so both see the same sampling decisions."""

    def __init__(self) -> None:
        self._trace, self._span = 0, 0

    def generate_trace_id(self) -> int:
        self._trace += 1
        return (0xFEED << 64) | ((self._trace * 0x2545F4914F6CDD1D) & ((1 << 64) - 1))

    def generate_span_id(self) -> int:
        self._span += 1
        return self._span


def _ratio_workload() -> tuple[list[Any], list[Any], int]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(0.5)),
        id_generator=_SequentialIds(),
        resource=Resource.create({"service.name": "ratio"}),
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    _runtime.set_default_runtime(_runtime.Runtime(provider, meters))
    model = vt.instrument_model(
        TinyDetector(), name="det", tracer_provider=provider, meter_provider=meters
    )
    roots: list[bool] = []
    try:
        with torch.inference_mode():
            for _ in range(24):
                model(torch.randn(1, 3, 16, 16))  # each a new trace: the ratio decides
                with vt.stage("nms"):
                    roots.append(trace.get_current_span().is_recording())
        assert vt.flush(10)
        points = _points(reader)
    finally:
        vt.uninstrument_model(model)
        _runtime.set_default_runtime(None)
    spans = list(exporter.get_finished_spans())
    for span in spans:  # a kept trace's id is one the sampler keeps
        assert (span.context.trace_id & ((1 << 64) - 1)) < TraceIdRatioBased(0.5).bound
    return _tree(spans), points, sum(roots)


def test_a_trace_id_ratio_decides_new_traces_as_the_sdk_does() -> None:
    fast = _ratio_workload()
    _otel_private._use_public_api(True)
    public = _ratio_workload()
    assert fast == public
    assert 4 <= fast[2] <= 20  # some stages kept, some dropped
    kept = {json.loads(row)["name"] for row in fast[0]}
    assert {"inference det", "nms"} <= kept
