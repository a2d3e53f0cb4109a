"""Models and telemetry plumbing shared by the visiontel-torch tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from tiny_models import TinyDetector  # noqa: F401 (re-exported for the tests)

import visiontel.torch as vt
from visiontel.torch import _compiled


def data_points(reader: InMemoryMetricReader) -> list[tuple[str, Any]]:
    """(metric name, data point) of everything ``reader`` collects now."""
    data = reader.get_metrics_data()
    return [
        (metric.name, point)
        for resource_metrics in (data.resource_metrics if data else ())
        for scope in resource_metrics.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    ]


@dataclass
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self) -> list[ReadableSpan]:
        assert vt.flush(10.0), "resolver did not drain"
        return list(self.exporter.get_finished_spans())

    def by_name(self) -> dict[str, list[ReadableSpan]]:
        out: dict[str, list[ReadableSpan]] = {}
        for span in self.spans():
            out.setdefault(span.name, []).append(span)
        return out

    def metric_points(self, name: str) -> list[Any]:
        return [point for metric, point in data_points(self.reader) if metric == name]

    def instrument(self, model: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("tracer_provider", self.tracer_provider)
        kwargs.setdefault("meter_provider", self.meter_provider)
        return vt.instrument_model(model, **kwargs)


def make_telemetry(sampler: Sampler | None = None) -> Telemetry:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return Telemetry(tracer_provider, MeterProvider(metric_readers=[reader]), exporter, reader)


class Reused(torch.nn.Module):
    """Calls the same block twice in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.block = torch.nn.Linear(4, 4)
        self.out = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(self.block(x)))


class RgbIrFusion(torch.nn.Module):
    """Two-stream model: RGB and IR backbones fused into one head."""

    def __init__(self) -> None:
        super().__init__()
        self.rgb = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
        self.ir = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU())
        self.fuse = torch.nn.Conv2d(8, 6, 1)

    def forward(self, rgb: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(torch.cat([self.rgb(rgb), self.ir(ir)], dim=1))
        return fused.flatten(2).transpose(1, 2)[0, :5]  # N×6 rows of one image


class Failing(torch.nn.Module):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.ok = torch.nn.Linear(4, 4)
        self.bad = Raiser(error)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bad(self.ok(x))  # type: ignore[no-any-return]


class Raiser(torch.nn.Module):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.error


def assert_no_hooks(model: torch.nn.Module) -> None:
    for name, module in model.named_modules():
        for attribute in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_forward_hooks_always_called",
            "_forward_hooks_with_kwargs",
            "_forward_pre_hooks_with_kwargs",
            "_backward_hooks",
        ):
            assert not getattr(module, attribute, {}), f"{name or '<root>'}.{attribute} not empty"
        assert not _wrapped(module), f"{name or '<root>'}.forward still wrapped"


def _wrapped(module: torch.nn.Module) -> bool:
    return type(vars(module).get("forward")).__name__ in {"_CopiesAsInner", "StampedForward"}


def is_armed(module: torch.nn.Module) -> bool:
    """Whether visiontel's stamping probe is installed on ``module`` right now."""
    return _wrapped(module) or bool(module._forward_pre_hooks)


@contextlib.contextmanager
def loops(chosen: ModuleType | None) -> Iterator[None]:
    """Run with the compiled loops (the ``_speedups`` module) or the pure-Python ones (None)."""
    saved, _compiled.speedups = _compiled.speedups, chosen
    try:
        yield
    finally:
        _compiled.speedups = saved


def shapes(spans: list[Any]) -> list[tuple[Any, ...]]:
    """What a reader sees of each span, ids replaced by the name of the parent span."""
    names = {span.context.span_id: span.name for span in spans}
    return sorted(
        (
            (
                span.name,
                sorted(span.attributes.items()),
                names.get(span.parent.span_id, "outside") if span.parent else None,
                span.kind,
                span.status.status_code,
                [event.name for event in span.events],
                span.resource is spans[0].resource,
                span.instrumentation_scope.name,
                span.end_time >= span.start_time,
            )
            for span in spans
        ),
        key=repr,  # roots' parent is None
    )
