"""Remote ``SpanContext`` objects built the way the OpenTelemetry API builds them.

Every extract creates one; the API's ``SpanContext.__new__`` fills in defaults,
computes ``is_valid`` and builds a tuple, and costs about as much as decoding the
``traceparent`` itself. The same tuple is built here directly, but only if, on
probes at import, it comes out identical to the API's own; otherwise the API's
constructor is used.
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry.trace import SpanContext, TraceFlags, TraceState

_TRACE_FLAGS = [TraceFlags(flags) for flags in range(256)]
DEFAULT_STATE = SpanContext(1, 1, True).trace_state
_new_tuple = tuple.__new__


def _fast_remote(
    trace_id: int, span_id: int, flags: int, trace_state: TraceState | None
) -> SpanContext:
    # The API's SpanContext is a tuple subclass whose __new__ only fills in defaults
    # and computes is_valid; doing the same here saves most of its cost.
    return _new_tuple(
        SpanContext,
        (
            trace_id,
            span_id,
            True,
            _TRACE_FLAGS[flags] if 0 <= flags < 256 else TraceFlags(flags),
            DEFAULT_STATE if trace_state is None else trace_state,
            0 < trace_id < 1 << 128 and 0 < span_id < 1 << 64,
        ),
    )


def _slow_remote(
    trace_id: int, span_id: int, flags: int, trace_state: TraceState | None
) -> SpanContext:
    return SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags), trace_state=trace_state
    )


_RemoteFactory = Callable[[int, int, int, "TraceState | None"], SpanContext]


def _pick_remote() -> _RemoteFactory:
    """The fast constructor if it builds exactly what the API's own does, on probes."""
    state = TraceState([("k", "v")])
    probes = ((1, 2, 1, None), ((1 << 128) - 1, (1 << 64) - 1, 0, state), (1 << 128, 0, 3, None))
    for probe in probes:
        fast, slow = _fast_remote(*probe), _slow_remote(*probe)
        if type(fast) is not type(slow) or tuple(fast) != tuple(slow):
            return _slow_remote
        if fast.trace_flags != slow.trace_flags or fast.is_valid != slow.is_valid:
            return _slow_remote
    return _fast_remote


remote_span_context: _RemoteFactory = _pick_remote()
"""``SpanContext(trace_id, span_id, is_remote=True, ...)`` from wire values."""
