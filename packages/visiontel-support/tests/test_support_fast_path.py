"""``FastPath`` reads a parent ``SpanContext``'s tuple fields where ``_context_factory``
checked that layout, and the current span from the context's variable where
``_context_slot`` checked it: its answers must be the ones the public API gives."""

from __future__ import annotations

import copy
import itertools

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation import _SPAN_KEY

from visiontel._support._otel_private import FastPath, fast_path_for
from visiontel._support.livespans import LiveSpans

_SCOPE = ("visiontel.test", "1.0", None)
_STATE = TraceState([("vendor", "frame-7")])


def _parents() -> list[SpanContext]:
    made = [INVALID_SPAN_CONTEXT]
    for remote, flags in itertools.product((False, True), (0, 1)):
        made.append(SpanContext(0xABC << 70 | 5, 0x1234, remote, TraceFlags(flags), _STATE))
    return made


def _paths(sampler: object) -> tuple[FastPath, FastPath]:
    """The fast path as the gate gives it, and a copy that must use the properties."""
    path = fast_path_for(TracerProvider(sampler=sampler), _SCOPE)  # type: ignore[arg-type]
    assert path is not None
    by_properties = copy.copy(path)
    by_properties._context_class = None
    return path, by_properties


_MIXED = ParentBased(
    ALWAYS_ON, remote_parent_sampled=ALWAYS_OFF, local_parent_not_sampled=ALWAYS_ON
)


@pytest.mark.parametrize(
    "sampler", [ALWAYS_ON, ALWAYS_OFF, _MIXED], ids=["always_on", "always_off", "mixed"]
)
def test_decisions_from_tuple_fields_match_the_properties(sampler: object) -> None:
    path, by_properties = _paths(sampler)
    for parent in _parents():
        assert path.decide(parent) == by_properties.decide(parent), parent


def test_child_contexts_from_tuple_fields_match_the_constructor() -> None:
    path, by_properties = _paths(ALWAYS_ON)
    if path._context_class is None:
        pytest.skip("this API's SpanContext is not the tuple _context_factory knows")
    for parent in _parents():
        fast, slow = path.child_context(parent), by_properties.child_context(parent)
        if not parent.is_valid:
            assert fast is None and slow is None
            continue
        assert fast is not None and slow is not None
        built = SpanContext(
            parent.trace_id, fast.span_id, False, TraceFlags(TraceFlags.SAMPLED), _STATE
        )
        assert tuple(fast) == tuple(built)
        assert (fast.trace_id, fast.is_remote, fast.trace_flags, fast.trace_state) == (
            slow.trace_id, slow.is_remote, slow.trace_flags, slow.trace_state)  # fmt: skip
        assert fast.is_valid and fast.span_id != parent.span_id


def test_the_current_parent_read_from_the_context_variable_matches_the_api() -> None:
    """``current_parent`` reads the context's variable for a live span, a remote parent
    and no span, and asks the API for anything else: always the API's answer."""
    provider = TracerProvider()
    path, by_api = _paths(ALWAYS_ON)
    by_api._span_slot = None
    live = LiveSpans(provider, provider.get_tracer(*_SCOPE[:2]), _SCOPE).start("frame", {})
    assert type(live) in FastPath.live_span_types
    sdk_span = provider.get_tracer("app").start_span("user")
    remote = NonRecordingSpan(_parents()[3])
    currents: list[object] = [None, live, remote, sdk_span, "not a span"]
    for current in currents:
        context = Context() if current is None else Context({_SPAN_KEY: current})
        token = otel_context.attach(context)
        try:
            expected = trace.get_current_span().get_span_context()
            assert path.current_parent() == expected == by_api.current_parent(), current
        finally:
            otel_context.detach(token)
    if path._span_slot is None:
        pytest.skip("this API keeps its context otherwise: only the API's answer was checked")
