"""Forwards the sampler keeps: the compiled root hooks (``_speedups.RootHooks``) against the
pure-Python ones.

The compiled path decides the root span under the current span, starts it as a live span,
makes it current, and at the end detaches it and queues the rest as later work, as
``_model``'s Python does. These tests trace the same frames both ways and compare the
exported spans and points, under every kind of parent the compiled path decides (none, a
local sampled or dropped one, a trace-id ratio) and the ones it leaves to Python (a remote
parent, a span promoted inside the forward).
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import torch
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanContext, TraceFlags

import visiontel.torch as vt
from visiontel._support._otel_private import _fast_path
from visiontel.torch import _inputs, _model, _probes, _resolver, _stage, _threads
from visiontel.torch._runtime import runtime_for

from torch_support import data_points, loops, shapes

BATCHES = [1, 3, 2]


class Net(torch.nn.Module):
    """(B, 4) in, N x 6 out; notes the current span and depth; raises on a NaN input."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 6)
        self.seen: list[tuple[trace.Span, int]] = []
        self.inside: Any = None  # called inside the forward, when set

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((trace.get_current_span(), _threads.forward_depth()))
        if self.inside is not None:
            self.inside()
        if torch.isnan(x).any():
            raise ValueError("bad frame")
        return self.head(self.backbone(torch.cat([x, x])))  # type: ignore[no-any-return]


class Traced:
    """A Net instrumented with a batched, exporting provider of ``sampler``."""

    def __init__(self, sampler: Any = ALWAYS_ON) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider(sampler=sampler)
        self.tracer_provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.python_begins = 0

    @contextlib.contextmanager
    def instrumented(
        self, chosen: ModuleType | None, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
    ) -> Iterator[Net]:
        original = _model.ModelInstrumentation._begin

        def counted(instrumentation: Any, *args: Any) -> None:
            self.python_begins += 1
            original(instrumentation, *args)

        monkeypatch.setattr(_model.ModelInstrumentation, "_begin", counted)
        with loops(chosen):
            model = vt.instrument_model(
                Net(),
                tracer_provider=self.tracer_provider,
                meter_provider=self.meter_provider,
                **kwargs,
            )
            try:
                yield model
            finally:
                vt.uninstrument_model(model)

    def spans(self) -> list[Any]:
        assert vt.flush(10.0) and self.tracer_provider.force_flush()
        return list(self.exporter.get_finished_spans())

    def points(self) -> dict[str, list[tuple[Any, ...]]]:
        found: dict[str, list[tuple[Any, ...]]] = {}
        for name, point in data_points(self.reader):
            value = getattr(point, "count", getattr(point, "value", None))
            found.setdefault(name, []).append((sorted(point.attributes.items()), value))
        return {name: sorted(rows, key=repr) for name, rows in found.items()}


def frames(model: Net, batches: list[int]) -> None:
    with torch.no_grad():
        for batch in batches:
            model(torch.randn(batch, 4))


def run(
    chosen: ModuleType | None, monkeypatch: pytest.MonkeyPatch, granularity: str
) -> tuple[list[Any], dict[str, Any], int, Net]:
    traced = Traced()
    _inputs.attribute_cache.clear()  # the compiled path describes new input signatures too
    with traced.instrumented(chosen, monkeypatch, granularity=granularity) as model:
        frames(model, BATCHES)
        with torch.no_grad(), pytest.raises(ValueError, match="bad frame"):
            model(torch.full((2, 4), float("nan")))
        frames(model, [2])
    assert trace.get_current_span() is trace.INVALID_SPAN  # every context detached
    return traced.spans(), traced.points(), traced.python_begins, model


@pytest.mark.parametrize("granularity", ["model", "stage"])
def test_compiled_and_pure_python_give_the_same_spans_and_points(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch, granularity: str
) -> None:
    compiled_spans, compiled_points, compiled_begins, compiled_model = run(
        compiled, monkeypatch, granularity
    )
    pure_spans, pure_points, pure_begins, _ = run(None, monkeypatch, granularity)
    assert shapes(compiled_spans) == shapes(pure_spans)
    assert compiled_points == pure_points
    forwards = len(BATCHES) + 2
    roots = [span for span in compiled_spans if span.name == "inference Net"]
    assert len(roots) == forwards
    if granularity == "stage":
        assert {span.name for span in compiled_spans} > {"inference Net"}
    # Python set the guard on the first forward; the compiled path began every other one,
    # and made each forward's root span current inside it.
    assert (compiled_begins, pure_begins) == (1, forwards)
    root_ids = [span.context.span_id for span in roots]
    assert sorted(span.get_span_context().span_id for span, _ in compiled_model.seen) == sorted(
        root_ids
    )
    assert [depth for _, depth in compiled_model.seen] == [1] * forwards
    assert all(span.attributes["visiontel.batch.size"] for span in roots)


def test_forwards_under_a_users_span_follow_its_sampling(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    traced = Traced(ParentBased(ALWAYS_ON))
    tracer = traced.tracer_provider.get_tracer("user")
    dropped_parent = trace.NonRecordingSpan(
        SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(0))
    )
    with traced.instrumented(compiled, monkeypatch) as model:
        frames(model, [1])  # Python sets the guard
        with tracer.start_as_current_span("frame") as frame:
            frames(model, [1, 2])
        with trace.use_span(dropped_parent):
            frames(model, [3])
    assert traced.python_begins == 1
    spans = traced.spans()
    roots = [span for span in spans if span.name == "inference Net"]
    assert len(roots) == 3  # none under the dropped parent
    under_frame = [span for span in roots if span.parent is not None]
    assert len(under_frame) == 2
    for span in under_frame:
        assert span.parent.span_id == frame.get_span_context().span_id
        assert span.context.trace_id == frame.get_span_context().trace_id
    (images,) = traced.points()["visiontel.inference.images"]
    assert images[1] == 7  # the dropped forward's images too


def test_a_trace_id_ratio_decides_new_traces_in_the_compiled_path(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    sampler = TraceIdRatioBased(0.5)
    traced = Traced(ParentBased(sampler))
    with traced.instrumented(compiled, monkeypatch) as model:
        frames(model, [1] * 40)
    assert traced.python_begins == 1  # the first forward's, sampled or not
    roots = [span for span in traced.spans() if span.name == "inference Net"]
    assert 0 < len(roots) < 40
    assert all(span.context.trace_id & sampler.TRACE_ID_LIMIT < sampler.bound for span in roots)
    (duration,) = traced.points()["visiontel.inference.duration"]
    assert duration[1] == 40  # every forward timed, sampled or not


def test_a_remote_parent_is_left_to_the_tracer(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    traced = Traced()
    remote = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1))
    with traced.instrumented(compiled, monkeypatch) as model:
        frames(model, [1])
        token = otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(remote)))
        try:
            frames(model, [1, 1])
        finally:
            otel_context.detach(token)
        frames(model, [1])
    assert traced.python_begins == 3  # the first forward and the two under the remote parent
    roots = [span for span in traced.spans() if span.name == "inference Net"]
    assert sorted(span.parent is not None and span.parent.is_remote for span in roots) == [
        False,
        False,
        True,
        True,
    ]


def test_a_root_span_promoted_inside_the_forward_is_ended_by_python(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    traced = Traced()
    with traced.instrumented(compiled, monkeypatch) as model:
        frames(model, [1, 1])
        model.inside = lambda: trace.get_current_span().add_event("inside")
        frames(model, [1])
    assert traced.python_begins == 1
    roots = [span for span in traced.spans() if span.name == "inference Net"]
    assert sorted(len(span.events) for span in roots) == [0, 0, 1]
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_without_the_contexts_variable_sampled_forwards_stay_in_python(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On every API release the tests cover, the gate finds where the context keeps the
    # current span; where it does not (another runtime context), only Python starts spans.
    assert _fast_path._context_slot() is not None
    monkeypatch.setattr(_fast_path, "_context_slot", lambda: None)
    traced = Traced()
    with traced.instrumented(compiled, monkeypatch) as model:
        frames(model, [1, 1, 1])
    assert traced.python_begins == 3
    assert len([span for span in traced.spans() if span.name == "inference Net"]) == 3


class Boxes:
    def __init__(self, rows: int) -> None:
        self.boxes = [None] * rows


def _outputs() -> dict[str, Any]:
    """Outputs of every shape count_detections knows, and some it does not count."""
    rows = torch.zeros(3, 6)
    return {
        "N x 6": rows,
        "N x 5": torch.zeros(3, 5),
        "B x N x 6": torch.zeros(2, 3, 6),
        "list of N x 6": [rows, torch.zeros(0, 6)],
        "tuple of N x 6": (rows,),
        "list with a bad tensor": [rows, torch.zeros(4)],
        "empty list": [],
        "torchvision dicts": [{"boxes": torch.zeros(2, 4)}, {"boxes": torch.zeros(0, 4)}],
        "a dict without boxes": [{"scores": rows}],
        "a 0-d boxes tensor": {"boxes": torch.tensor(1.0)},
        "objects with boxes": [Boxes(4), Boxes(1)],
        "a tensor subclass": [torch.nn.Parameter(rows, requires_grad=False)],
        "boxes of a tensor subclass": [{"boxes": torch.nn.Parameter(rows, requires_grad=False)}],
        "something else": "text",
    }


class Echo(torch.nn.Module):
    def __init__(self, output: Any) -> None:
        super().__init__()
        self.output = output

    def forward(self, x: torch.Tensor) -> Any:
        return self.output


@pytest.mark.parametrize("sampler", [ALWAYS_ON, ALWAYS_OFF], ids=["sampled", "dropped"])
def test_compiled_detection_counts_are_count_detections(compiled: ModuleType, sampler: Any) -> None:
    from visiontel.torch._metrics import count_detections

    for label, output in _outputs().items():
        expected = count_detections(output)
        for chosen in (compiled, None):
            traced = Traced(sampler)
            with loops(chosen):
                model = vt.instrument_model(
                    Echo(output),
                    tracer_provider=traced.tracer_provider,
                    meter_provider=traced.meter_provider,
                )
                with torch.no_grad():
                    for _ in range(3):
                        model(torch.zeros(1, 4))
                roots = _model.instrumentation_of(model)._roots  # type: ignore[union-attr]
                guarded = roots is not None and roots.guard is not None
                vt.uninstrument_model(model)
            assert guarded is (chosen is not None), label
            assert vt.flush(10.0)
            found = {name: point for name, point in data_points(traced.reader)}
            points = found.get("visiontel.inference.detections")
            if expected is None:
                assert points is None, label
            else:
                assert points is not None, label
                assert (points.count, points.sum) == (3 * len(expected), 3 * sum(expected)), label


def test_a_removed_instrumentation_is_freed_without_the_cyclic_collector(
    compiled: ModuleType,
) -> None:
    # Nothing of the compiled hooks may keep the instrumentation, and through its tree the
    # model's modules (their parameters: GPU memory), alive once the model is uninstrumented.
    traced = Traced()
    enabled = gc.isenabled()
    gc.disable()
    try:
        with loops(compiled):
            model = vt.instrument_model(Net(), tracer_provider=traced.tracer_provider)
            instrumentation = weakref.ref(_model.instrumentation_of(model))
            frames(model, [1, 2, 1])  # compiled, sampled, finished through later work
            assert vt.flush(10.0)
            head = weakref.ref(model.head)
            vt.uninstrument_model(model)
            del model
        assert instrumentation() is None and head() is None
    finally:
        if enabled:
            gc.enable()


@pytest.mark.parametrize("kind", ["compiled", "python"])
def test_a_failure_once_the_root_span_is_current_gives_the_context_back(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    traced = Traced()
    chosen = compiled if kind == "compiled" else None
    with traced.instrumented(chosen, monkeypatch, granularity="stage") as model:
        frames(model, [1])  # Python sets the guard

        def broken(_probes: Any) -> None:
            raise RuntimeError("arming failed")

        monkeypatch.setattr(_probes.ChildProbes, "arm", broken)
        frames(model, [1])  # the error is reported, the forward runs
        assert trace.get_current_span() is trace.INVALID_SPAN
    assert traced.python_begins == (1 if chosen else 2)


_REAL_LATER = _resolver.Resolver.later


class LaterWork:
    """Watches ``Resolver.later`` (installed before a runtime binds it): what each call
    queued, and what it ran at once (queued by later work on the thread running it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.queued: list[str] = []
        self.at_once: list[str] = []
        original = _REAL_LATER  # not an earlier watcher (two in one test)

        def watched(resolver: Any, function: Any, *args: Any) -> None:
            before = len(resolver._later)
            original(resolver, function, *args)
            grew = len(resolver._later) > before  # (no run of 64 items in these tests)
            (self.queued if grew else self.at_once).append(function.__name__)

        monkeypatch.setattr(_resolver.Resolver, "later", watched)


@pytest.mark.parametrize("granularity", ["model", "stage"])
@pytest.mark.parametrize("kind", ["compiled", "python"])
def test_later_work_hands_its_spans_over_without_queueing_them_again(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch, kind: str, granularity: str
) -> None:
    """A sampled forward's later work (and a stage's) hands its live span to the processors
    in the same item: the span's end, queued as later work, runs at once there."""
    later = LaterWork(monkeypatch)
    traced = Traced()
    runtime = runtime_for(traced.tracer_provider, traced.meter_provider)
    with traced.instrumented(
        compiled if kind == "compiled" else None, monkeypatch, granularity=granularity
    ) as model:
        frames(model, [1, 2])
        with _stage.stage("postprocess", _runtime=runtime):
            pass
        spans = traced.spans()
    roots = [span for span in spans if span.name == "inference Net"]
    assert len(roots) == 2 and [span.name for span in spans if span not in roots] == (
        ["postprocess"] if granularity == "model" else ["backbone", "head"] * 2 + ["postprocess"]
    )
    assert sorted(later.queued) == ["_complete", "_complete", "complete"]  # no "_finish"
    assert later.at_once == ["_finish"] * 3  # the two roots' and the stage's
    assert [span.attributes["visiontel.detections"] for span in roots] == [2, 4]


def _later_work_scenario(
    chosen: ModuleType | None, monkeypatch: pytest.MonkeyPatch, counter: Any
) -> tuple[list[Any], dict[str, Any], list[tuple[str, float, int]], list[str]]:
    """Four sampled forwards at model granularity: the third's root span is kept by the
    model and promoted after the forward, before its later work runs."""
    later = LaterWork(monkeypatch)
    traced = Traced()
    kept: list[trace.Span] = []
    with traced.instrumented(chosen, monkeypatch, granularity="model", detections=counter) as model:
        frames(model, [1, 2])
        model.inside = lambda: kept.append(trace.get_current_span())
        frames(model, [3])
        model.inside = None
        kept[0].add_event("after the forward")  # promoted: an SDK span from here on
        frames(model, [2])
        spans = traced.spans()
    root_ids = {span.context.span_id: span.attributes["visiontel.batch.size"] for span in spans}
    exemplars = [
        (name, exemplar.value, root_ids[exemplar.span_id])
        for name, point in data_points(traced.reader)
        for exemplar in getattr(point, "exemplars", ())
    ]
    assert later.at_once == ["_finish"] * 3  # the promoted root's ends in the SDK
    return spans, traced.points(), sorted(exemplars), later.queued


@pytest.mark.parametrize(
    "counter", ["default", "floats"], ids=["tensor rows", "a counter giving floats"]
)
def test_compiled_and_python_hooks_give_the_same_later_work(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch, counter: str
) -> None:
    """Sampled forwards at model granularity, the compiled hooks against the Python ones:
    the same spans, points and detection exemplars, also for a root span promoted after
    its forward, before its later work runs (events and detection total included)."""
    count = None if counter == "default" else (lambda output: [float(len(output)) / 2])
    c_spans, c_points, c_exemplars, c_queued = _later_work_scenario(compiled, monkeypatch, count)
    p_spans, p_points, p_exemplars, p_queued = _later_work_scenario(None, monkeypatch, count)
    assert shapes(c_spans) == shapes(p_spans)
    assert c_points == p_points

    def detections(exemplars: list[tuple[str, float, int]]) -> list[tuple[str, float, int]]:
        return [e for e in exemplars if e[0] == "visiontel.inference.detections"]

    assert detections(c_exemplars) == detections(p_exemplars)  # durations are timings
    assert c_queued == p_queued == ["_complete"] * 4
    # one count per forward: the output's rows (2 per image), or the counter's float
    per_batch = {1: 2, 2: 4, 3: 6} if counter == "default" else {1: 1.0, 2: 2.0, 3: 3.0}
    totals = sorted(span.attributes["visiontel.detections"] for span in c_spans)
    assert totals == [per_batch[batch] for batch in (1, 2, 2, 3)]
    (promoted,) = [span for span in c_spans if span.events]
    assert [event.name for event in promoted.events] == ["after the forward"]
    assert promoted.attributes["visiontel.batch.size"] == 3
    # each exemplar names its own forward's span (known by its batch size), durations' too
    detections_seen = detections(c_exemplars)
    assert detections_seen == [(detections_seen[0][0], per_batch[b], b) for b in (1, 2, 3)]
    durations = [e for e in c_exemplars if e not in detections(c_exemplars)]
    assert durations and all(batch in {1, 2, 3} for _, _, batch in durations)
