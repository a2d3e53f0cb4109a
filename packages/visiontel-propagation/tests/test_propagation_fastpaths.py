"""The shortcuts taken for speed give exactly what the general code gives.

Each fast path either returns what the general path would, or declines (None) and
lets the general path decide; these tests hold them to that on random input.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags, TraceState

import visiontel.propagation as vp
from visiontel.propagation import _otel_private, _w3c

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CANONICAL = st.builds(
    lambda t, s, f: f"00-{t:032x}-{s:016x}-{f:02x}",
    st.integers(0, 2**128 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 255),
)


def _mutate(value: str, index: int, char: str, how: str) -> str:
    if how == "drop":
        return value[:index] + value[index + 1 :]
    return value[:index] + char + value[index + (how == "replace") :]


# One character changed, inserted or removed: uppercase, whitespace, dashes, non-ASCII.
MUTANT = st.builds(
    _mutate,
    CANONICAL,
    st.integers(0, 55),
    st.sampled_from(list("0aAfFgx- \t_+\u0663")),
    st.sampled_from(["replace", "insert", "drop"]),
)
TRACEPARENTS = st.one_of(
    CANONICAL,
    MUTANT,
    st.from_regex(r"\A[0-9a-fA-F]{2}-[0-9a-fA-F]{32}-[0-9a-fA-F]{16}-[0-9a-fA-F]{2}\Z"),
    st.text(max_size=60),
)


@FUZZ
@given(TRACEPARENTS)
def test_canonical_traceparent_agrees_with_the_general_parser(value):
    before = vp.rejected_counts()
    general = _w3c._parse_traceparent(value, "fastpath-test")
    fast = _w3c._canonical_traceparent(value)
    if fast is not None:
        assert fast == general
        assert vp.rejected_counts() == before  # the general parser accepted it too
    # and the public entry point always agrees with the general parser
    assert _w3c.parse_traceparent(value, "fastpath-test") == general


@FUZZ
@given(CANONICAL)
def test_every_canonical_traceparent_with_nonzero_ids_takes_the_fast_path(value):
    ids_nonzero = int(value[3:35], 16) and int(value[36:52], 16)
    assert (_w3c._canonical_traceparent(value) is not None) == bool(ids_nonzero)


def test_the_shortcuts_are_in_use_with_this_api_version():
    # If one of these fails after an OpenTelemetry upgrade, the fallbacks are in use:
    # still correct, only slower (the benchmark will show it). Past the newest tested
    # release that is by design: test it, then widen _otel_private.TESTED_API.
    assert _otel_private.fast_paths_enabled()
    assert _otel_private.context_with is _otel_private._fast_context_with
    assert _otel_private.span_context_and_baggage is _otel_private._fast_span_context_and_baggage


@FUZZ
@given(
    st.integers(0, 2**129),
    st.integers(0, 2**65),
    st.integers(0, 255),
    st.sampled_from([None, TraceState([("k", "v")])]),
)
def test_fast_span_context_is_the_apis_own(trace_id, span_id, flags, state):
    assert _otel_private.fast_paths_enabled()  # the span key is known
    built = _otel_private._fast_context_with(None, (trace_id, span_id, flags), state, None, None)
    fast = trace.get_current_span(built).get_span_context()
    slow = SpanContext(trace_id, span_id, True, TraceFlags(flags), state)
    assert type(fast) is SpanContext and tuple(fast) == tuple(slow)
    assert (fast.is_valid, fast.trace_flags.sampled, fast.trace_state) == (
        slow.is_valid,
        slow.trace_flags.sampled,
        slow.trace_state,
    )


def test_links_are_the_apis_own():
    # A hand-built Link saved 0.12 µs per frame (issue 19): dropped, not worth an internal.
    span_context = SpanContext(1, 2, True, TraceFlags(1))
    link = _otel_private.new_link(span_context)
    assert type(link) is Link
    assert (link.context, link.attributes, link.dropped_attributes) == (span_context, None, 0)


class _OtherSpan(NonRecordingSpan):
    """A span class batch_span has not seen before."""


def test_batch_links_match_the_generic_lookup(tracing):
    (span_key,) = trace.set_span_in_context(trace.INVALID_SPAN, Context())  # the API's own key
    sampled = SpanContext(5, 6, True, TraceFlags(1))
    frames = [
        trace.set_span_in_context(NonRecordingSpan(sampled)),
        Context(),  # no span: no link
        trace.set_span_in_context(_OtherSpan(SpanContext(7, 8, True, TraceFlags(0)))),
        Context({span_key: "not a span"}),  # foreign value: no link
        trace.set_span_in_context(NonRecordingSpan(SpanContext(9, 10, True))),
    ]
    with vp.batch_span(frames, tracer=tracing.tracer, member_spans=False) as batch:
        pass
    (span,) = tracing.named("infer batch")
    expected = [
        trace.get_current_span(c).get_span_context()
        for c in frames
        if trace.get_current_span(c).get_span_context().is_valid
    ]
    assert [link.context for link in span.links] == expected
    assert (batch.linked, batch.without_context) == (3, 2)
