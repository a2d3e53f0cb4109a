"""Fixtures: a private SDK tracer and meter per test (the global providers may
belong to another distribution's tests in the same pytest run)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler
from opentelemetry.trace import Tracer

from visiontel.propagation import _diag, _otel_private


@pytest.fixture(autouse=True)
def _fresh_log_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no rate-limited or log-once state left by an earlier test, so a
    test that counts log lines passes alone and in any order."""
    monkeypatch.setattr(_diag, "_last_log", {})
    _diag._errors.reset()


@pytest.fixture
def public_api_only() -> Iterator[bool]:
    """The fast paths forced off for one test (True if they were on before it); the gate
    decides afresh after it."""
    was_on = _otel_private.fast_paths_enabled()
    _otel_private._force(False)
    yield was_on
    _otel_private._force(None)


@dataclass
class Tracing:
    provider: TracerProvider
    tracer: Tracer
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]


def make_tracing(sampler: Sampler | None = None) -> Tracing:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider, provider.get_tracer("test"), exporter)


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    t = make_tracing()
    yield t
    t.provider.shutdown()


@pytest.fixture
def unsampled_tracing() -> Iterator[Tracing]:
    """Roots are dropped; children follow their parent's decision."""
    t = make_tracing(ParentBased(ALWAYS_OFF))
    yield t
    t.provider.shutdown()


@pytest.fixture
def metric_reader() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()
