"""Forwards the sampler drops: the compiled root-hook path (``_speedups.RootHooks``)
against the pure-Python one, and the guard that sends forwards back to Python.

The compiled path acts only while the gate's guard (``FastPath.roots_guard``) holds:
every span dropped, spans ending in batches. These tests change what the guard watches
(a processor added, the global provider, the tracer configurator) and check that the next
forward is handled by Python with the same points.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import torch
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

import visiontel.torch as vt
from visiontel.torch import _model, _runtime, _threads

from torch_support import data_points, loops


class Detector(torch.nn.Module):
    """(B, 4) in, N x 6 out (one image's detections, N = 2 * B); raises on a NaN input."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(4, 6)
        self.depth_seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.depth_seen.append(_threads.forward_depth())
        if torch.isnan(x).any():
            raise ValueError("bad frame")
        return self.head(torch.cat([x, x]))


class Providers:
    def __init__(self, sampler: Any = ALWAYS_OFF) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer = TracerProvider(sampler=sampler)
        self.tracer.add_span_processor(BatchSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter = MeterProvider(metric_readers=[self.reader])

    @contextlib.contextmanager
    def instrumented(
        self, chosen: ModuleType | None, *, explicit: bool = True, **kwargs: Any
    ) -> Iterator[tuple[Detector, Any]]:
        """A Detector instrumented with these providers (the tracer provider left to the
        global one unless ``explicit``) and its ``_roots``, with ``chosen`` loops."""
        if explicit:
            kwargs["tracer_provider"] = self.tracer
        with loops(chosen):
            model = vt.instrument_model(Detector(), meter_provider=self.meter, **kwargs)
            instrumentation = _model.instrumentation_of(model)
            assert instrumentation is not None
            try:
                yield model, instrumentation._roots
            finally:
                vt.uninstrument_model(model)

    def points(self) -> dict[str, list[tuple[Any, ...]]]:
        assert vt.flush(10.0)
        found: dict[str, list[tuple[Any, ...]]] = {}
        for name, point in data_points(self.reader):
            value = getattr(point, "count", None), getattr(point, "sum", None)
            if hasattr(point, "value"):
                value = (point.value,)
            attributes = tuple(sorted(point.attributes.items()))
            found.setdefault(name, []).append((attributes, *value))
        return {name: sorted(rows) for name, rows in found.items()}


class PythonCalls:
    """Counts the pure-Python dropped path's calls (it still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.begins = 0
        original = _model.ModelInstrumentation._begin_dropped

        def counted(instrumentation: Any, args: Any, kwargs: Any) -> None:
            self.begins += 1
            original(instrumentation, args, kwargs)

        monkeypatch.setattr(_model.ModelInstrumentation, "_begin_dropped", counted)


def _frames(model: torch.nn.Module, batches: list[int]) -> None:
    with torch.no_grad():
        for batch in batches:
            model(torch.randn(batch, 4))


BATCHES = [1, 3, 2, 4, 1]


def _run(
    chosen: ModuleType | None, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> tuple[dict[str, list[tuple[Any, ...]]], int, Detector]:
    providers = Providers()
    calls = PythonCalls(monkeypatch)
    with providers.instrumented(chosen, **kwargs) as (model, _):
        _frames(model, BATCHES)
    points = providers.points()
    assert not providers.exporter.get_finished_spans()
    return points, calls.begins, model


def _without_sums(points: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """Durations differ from run to run: keep their counts only."""
    duration = "visiontel.inference.duration"
    return {**points, duration: [row[:2] for row in points[duration]]}


def test_compiled_and_pure_python_record_the_same_points(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled_points, compiled_begins, compiled_model = _run(compiled, monkeypatch)
    pure_points, pure_begins, pure_model = _run(None, monkeypatch)
    assert _without_sums(compiled_points) == _without_sums(pure_points)
    (images,) = compiled_points["visiontel.inference.images"]
    assert images[-1] == sum(BATCHES)
    (detections,) = compiled_points["visiontel.inference.detections"]
    assert detections[1:] == (len(BATCHES), 2 * sum(BATCHES))  # one image each, N = 2 * B
    (duration,) = compiled_points["visiontel.inference.duration"]
    assert duration[1] == len(BATCHES)
    # Python set the guard on the first forward; the compiled path took every other one.
    assert (compiled_begins, pure_begins) == (1, len(BATCHES))
    # both kept the forward depth as Python does: 1 inside the forward
    assert compiled_model.depth_seen == pure_model.depth_seen == [1] * len(BATCHES)
    assert _threads.forward_depth() == 0


def test_a_custom_detection_counter_is_called_by_the_compiled_path(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, ...]] = []

    def per_row(output: torch.Tensor) -> list[int]:
        seen.append(tuple(output.shape))
        return [1] * output.shape[0]

    points, begins, _ = _run(compiled, monkeypatch, detections=per_row)
    assert begins == 1
    assert seen == [(2 * batch, 6) for batch in BATCHES]
    (detections,) = points["visiontel.inference.detections"]
    assert detections[1:] == (2 * sum(BATCHES), 2 * sum(BATCHES))


def test_a_processor_added_later_sends_forwards_back_to_python(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    providers = Providers()
    calls = PythonCalls(monkeypatch)
    with providers.instrumented(compiled) as (model, dropped):
        _frames(model, [1, 1])
        assert dropped.guard is not None and calls.begins == 1
        # spans no longer end in batches only: the compiled path must stop acting
        providers.tracer.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        _frames(model, [2, 2, 2])
        assert dropped.guard is None
        assert calls.begins == 4
    points = providers.points()
    (images,) = points["visiontel.inference.images"]
    assert images[-1] == 8
    (duration,) = points["visiontel.inference.duration"]
    assert duration[1] == 5


def test_the_global_provider_is_watched_when_none_was_given(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    providers = Providers()
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", providers.tracer)
    calls = PythonCalls(monkeypatch)
    sampled = Providers(ALWAYS_ON)
    with providers.instrumented(compiled, explicit=False) as (model, dropped):
        _frames(model, [1, 1])
        assert calls.begins == 1
        assert (trace, "_TRACER_PROVIDER", providers.tracer) in dropped.guard
        monkeypatch.setattr(trace, "_TRACER_PROVIDER", sampled.tracer)
        _frames(model, [1])
        # broken, then rebuilt by Python (which traced that forward) for the new provider
        assert (trace, "_TRACER_PROVIDER", sampled.tracer) in dropped.guard
    assert vt.flush(10.0) and sampled.tracer.force_flush()
    names = [span.name for span in sampled.exporter.get_finished_spans()]
    assert names.count("inference Detector") == 1  # the forward after the swap, sampled


def test_a_tracer_configurator_that_disables_visiontel_is_seen(compiled: ModuleType) -> None:
    providers = Providers()
    set_configurator = getattr(providers.tracer, "_set_tracer_configurator", None)
    with providers.instrumented(compiled) as (model, dropped):
        _frames(model, [1, 1])
        assert dropped.guard is not None
        if set_configurator is None:  # an SDK before tracer configurators: nothing to watch
            return
        from opentelemetry.sdk.trace import _TracerConfig

        set_configurator(tracer_configurator=lambda _scope: _TracerConfig(is_enabled=False))
        _frames(model, [1])
        assert dropped.guard is None


def test_failures_and_other_inputs_are_handled_by_python(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    providers = Providers()
    calls = PythonCalls(monkeypatch)
    with providers.instrumented(compiled) as (model, dropped):
        _frames(model, [1, 1])
        guard = dropped.guard
        with torch.no_grad(), pytest.raises(ValueError, match="bad frame"):
            model(torch.full((3, 4), float("nan")))  # begun compiled, failed: Python ends it
        assert calls.begins == 1
        with torch.no_grad():
            model(x=torch.randn(2, 4))  # not model(images): described by Python
        assert calls.begins == 2
        assert dropped.guard is guard  # declined for its inputs: the guard was not rebuilt
        _frames(model, [1])
        assert calls.begins == 2  # and the next model(images) is compiled again
    assert _threads.forward_depth() == 0
    points = providers.points()
    durations = points["visiontel.inference.duration"]
    failed = [row for row in durations if ("error.type", "ValueError") in row[0]]
    assert len(failed) == 1 and failed[0][1] == 1
    assert sum(row[1] for row in durations) == 5
    (images,) = points["visiontel.inference.images"]
    assert images[-1] == 5  # the failed forward's images are not counted


def test_no_guard_where_the_compiled_path_may_not_act() -> None:
    for sampler in (ALWAYS_ON, ALWAYS_OFF):
        provider = TracerProvider(sampler=sampler)
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        spans = _runtime.runtime_for(provider, None).spans
        assert spans.compiled_roots() == (None, None)  # spans not ended in batches
    for sampler, always_drop in ((ALWAYS_OFF, True), (ALWAYS_ON, False)):
        providers = Providers(sampler)
        guard, plan = _runtime.runtime_for(providers.tracer, None).spans.compiled_roots()
        assert guard and plan[0] is always_drop
