"""Child spans through the SDK fast path and through the plain API give the same trees."""

from __future__ import annotations

import torch
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import visiontel.torch as vt
from visiontel.torch._children import ApiChildren, SdkChildren, children_for

from torch_support import Reused, TinyDetector


class CustomProvider(TracerProvider):
    """A subclass may change how spans are made: it must get the API path."""


def _tree(provider_type: type[TracerProvider], model: torch.nn.Module) -> list[tuple]:  # type: ignore[type-arg]
    exporter = InMemorySpanExporter()
    provider = provider_type(resource=Resource.create({"service.name": "det"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    vt.instrument_model(model, granularity="layer", tracer_provider=provider)
    try:
        model(torch.randn(1, 3, 8, 8) if isinstance(model, TinyDetector) else torch.randn(2, 4))
        assert vt.flush()
    finally:
        vt.uninstrument_model(model)
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    root = next(s for s in spans if s.parent is None)
    for span in spans:
        assert span.resource.attributes["service.name"] == "det"
        assert span.instrumentation_scope.name == "visiontel.torch"
        assert span.context.trace_id == root.context.trace_id
        assert span.context.trace_flags.sampled
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time
    return sorted(
        (
            s.name,
            by_id[s.parent.span_id].name if s.parent else None,
            tuple(
                sorted((k, v) for k, v in s.attributes.items() if k.startswith("visiontel.module"))
            ),
        )
        for s in spans
    )


def test_fast_and_api_paths_build_the_same_tree() -> None:
    for model in (TinyDetector(), Reused()):
        fast = _tree(TracerProvider, model)
        api = _tree(CustomProvider, model)
        assert fast == api
        assert len(fast) > 3


def test_path_selection() -> None:
    tracer = TracerProvider().get_tracer("t")
    assert isinstance(children_for(TracerProvider(), tracer), SdkChildren)
    assert isinstance(children_for(CustomProvider(), tracer), ApiChildren)
    assert isinstance(children_for(object(), tracer), ApiChildren)


def test_fast_span_context_equals_the_constructors() -> None:
    import random

    from opentelemetry.trace import SpanContext, TraceFlags, TraceState

    from visiontel._support._otel_private._fast_path import _context_factory

    make = _context_factory()
    rng = random.Random(5)
    for _ in range(200):
        trace_id, span_id = rng.getrandbits(128) | 1, rng.getrandbits(64) | 1
        flags = TraceFlags(rng.choice([0, 1]))
        state = TraceState([("k", "v")]) if rng.random() < 0.5 else TraceState()
        fast = make(trace_id, span_id, flags, state)
        slow = SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags, trace_state=state)
        assert fast == slow and type(fast) is SpanContext
        assert (fast.is_valid, fast.is_remote, fast.trace_state) == (True, False, state)
