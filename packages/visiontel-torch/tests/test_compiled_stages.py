"""``vt.stage`` blocks: the compiled entry and exit (``_speedups.StageHooks``) against the
pure-Python ones.

The compiled path starts a sampled block's span as a live span, makes it current, and at
the end puts the context back and leaves the duration point and the span's end to the
resolver's later work, as ``_stage``'s Python does. It declines whatever it cannot be sure
of (a dropped or remote parent, an exception leaving the block, a provider or default
runtime that changed): Python does those. These tests run the same blocks both ways and
compare what is exported.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
import random
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanContext, TraceFlags

import visiontel.torch as vt
from visiontel.torch import _runtime, stage

from torch_support import data_points, loops, shapes

DURATION = "visiontel.inference.duration"


class Stages:
    """A batched, exporting pair of providers as the default runtime; counts the stage
    spans Python starts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, sampler: Any = ALWAYS_ON) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider(sampler=sampler)
        self.tracer_provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.runtime = _runtime.Runtime(self.tracer_provider, self.meter_provider)
        self.tracer = self.tracer_provider.get_tracer("user")
        self.python_starts = 0
        original = self.runtime.spans.start

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.python_starts += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(self.runtime.spans, "start", counted)

    @contextlib.contextmanager
    def default(self, chosen: ModuleType | None) -> Iterator[None]:
        _runtime.set_default_runtime(self.runtime)
        try:
            with loops(chosen):
                yield
        finally:
            _runtime.set_default_runtime(None)

    def spans(self) -> list[Any]:
        assert vt.flush(10.0) and self.tracer_provider.force_flush()
        return list(self.exporter.get_finished_spans())

    def points(self) -> list[Any]:
        return [point for name, point in data_points(self.reader) if name == DURATION]


def blocks(stages: Stages) -> list[trace.Span]:
    """Stage blocks under a user's span, around one, failing, and as a root; the spans
    current inside them."""
    pre = stage("preprocess", model="det", version="1", attributes={"camera": "a"})
    post = stage("postprocess", metric=False)
    seen = []
    for _ in range(4):
        with stages.tracer.start_as_current_span("frame"):
            with pre:
                seen.append(trace.get_current_span())
                with stages.tracer.start_as_current_span("inner"):
                    pass
            with post:
                seen.append(trace.get_current_span())
    with pytest.raises(ValueError, match="bad frame"), pre:
        raise ValueError("bad frame")
    with pre:
        seen.append(trace.get_current_span())
    assert trace.get_current_span() is trace.INVALID_SPAN  # every context put back
    return seen


def run(chosen: ModuleType | None, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    stages = Stages(monkeypatch)
    with stages.default(chosen):
        seen = blocks(stages)
    spans = stages.spans()
    return spans, stages.points(), stages.python_starts, seen


def test_compiled_and_pure_python_stages_give_the_same_spans_and_points(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled_spans, compiled_points, compiled_starts, seen = run(compiled, monkeypatch)
    pure_spans, pure_points, pure_starts, _ = run(None, monkeypatch)
    assert shapes(compiled_spans) == shapes(pure_spans)
    # Python started each stage's first span (and armed the compiled path); the compiled
    # path every other, the failing block's included (only its end is Python's).
    assert (compiled_starts, pure_starts) == (2, 10)
    by_id = {span.context.span_id: span for span in compiled_spans}
    stage_spans = [span for span in compiled_spans if span.name in ("preprocess", "postprocess")]
    assert sorted(span.get_span_context().span_id for span in seen) == sorted(
        span.context.span_id for span in stage_spans if span.status.is_ok
    )
    inner = [span for span in compiled_spans if span.name == "inner"]
    assert {by_id[span.parent.span_id].name for span in inner} == {"preprocess"}
    failed = [span for span in stage_spans if not span.status.is_ok]
    assert len(failed) == 1 and [event.name for event in failed[0].events] == ["exception"]

    def summary(points: list[Any]) -> list[tuple[Any, ...]]:
        return sorted((sorted(p.attributes.items()), p.count) for p in points)

    assert summary(compiled_points) == summary(pure_points)
    assert [p.count for p in compiled_points] and sum(p.count for p in compiled_points) == 6
    # each point's exemplars name the spans of its stage
    exemplar_ids = {e.span_id for p in compiled_points for e in p.exemplars}
    assert exemplar_ids and exemplar_ids <= {span.context.span_id for span in stage_spans}


def test_dropped_and_remote_parents_are_left_to_python(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages = Stages(monkeypatch, ParentBased(ALWAYS_ON))
    pre = stage("preprocess")
    dropped = trace.NonRecordingSpan(SpanContext(0xABC, 0xDEF, False, TraceFlags(0)))
    remote = trace.NonRecordingSpan(SpanContext(0xABD, 0xDEE, True, TraceFlags(1)))
    with stages.default(compiled):
        with pre:  # Python arms the compiled path
            pass
        with trace.use_span(dropped):
            with pre:
                inside_dropped = trace.get_current_span()
        with trace.use_span(remote):
            with pre:
                pass
        assert trace.get_current_span() is trace.INVALID_SPAN
    assert stages.python_starts == 3
    assert not inside_dropped.is_recording()
    assert inside_dropped.get_span_context().trace_id == 0xABC
    spans = stages.spans()
    assert len(spans) == 2  # the root and the remote parent's child
    (under_remote,) = [span for span in spans if span.parent is not None]
    assert (under_remote.parent.span_id, under_remote.context.trace_id) == (0xDEE, 0xABD)
    assert sum(p.count for p in stages.points()) == 3  # dropped blocks still count


class _SeesStarts(SpanProcessor):
    def __init__(self) -> None:
        self.started: list[str] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.started.append(span.name)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # SDK 1.30's base class answers None: "failed"


def test_a_changed_provider_or_default_runtime_breaks_the_guard(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages, other = Stages(monkeypatch), Stages(monkeypatch)
    pre = stage("preprocess")
    with stages.default(compiled):
        for _ in range(3):
            with pre:
                pass
        assert stages.python_starts == 1 and pre._hooks.guard is not None
        _runtime.set_default_runtime(other.runtime)
        with pre:
            pass
        assert other.python_starts == 1  # the guard's default-runtime read broke
        _runtime.set_default_runtime(stages.runtime)
        for _ in range(2):
            with pre:
                pass
        assert stages.python_starts == 2  # Python re-armed it once
        watcher = _SeesStarts()
        stages.tracer_provider.add_span_processor(watcher)  # its on_start must be called
        with pre:
            pass
        assert watcher.started == ["preprocess"] and stages.python_starts == 3
    assert [span.name for span in other.spans()] == ["preprocess"]
    assert len(stages.spans()) == 6


def test_a_new_trace_under_a_trace_id_ratio_draws_its_id_once(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled path leaves such a block to Python before drawing: a drop decided by a
    drawn id, then decided again by Python with another, would sample more than the ratio.
    Seeded alike, both paths draw the same ids and keep the same spans."""
    kept = []
    for chosen in (compiled, None):
        stages = Stages(monkeypatch, TraceIdRatioBased(0.5))
        pre = stage("preprocess")
        random.seed(20261206)
        with stages.default(chosen):
            for _ in range(40):
                with pre:
                    pass
        kept.append(sorted(span.context.trace_id for span in stages.spans()))
    assert kept[0] == kept[1]
    assert 5 < len(kept[0]) < 35


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_a_used_stage_still_copies_and_pickles(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A stage kept on a user's object goes wherever that object goes: the compiled hooks
    it made on its first block are left out, and the copy makes its own."""
    stages = Stages(monkeypatch)
    pre = stage("preprocess", model="det")
    copier = {
        "copy": copy.copy,
        "deepcopy": copy.deepcopy,
        "pickle": lambda value: pickle.loads(pickle.dumps(value)),
    }[how]
    with stages.default(compiled):
        for _ in range(2):
            with pre:
                pass
        assert pre._hooks is not None
        twin = copier(pre)
        assert twin._hooks is None
        for _ in range(2):
            with twin:
                pass
        assert twin._hooks is not None and twin._hooks is not pre._hooks
    assert [span.name for span in stages.spans()] == ["preprocess"] * 4
