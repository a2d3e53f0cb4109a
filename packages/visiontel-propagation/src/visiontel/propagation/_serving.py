"""Serving helpers that need only the OpenTelemetry API: the force-trace request flag and
the trace id handed back to the caller.

Force-trace: a sampler never sees the request's headers, only the context the span is
started in. :class:`ForceTracePropagator` (the ``visiontel_force_trace`` propagator) reads
``visiontel-force-trace: 1`` on extract and leaves a flag in the extracted context;
:class:`~visiontel.propagation.ForceTraceSampler` (``_sampler.py``, needs the SDK) looks for
that flag. Nothing here decides to sample: a flag that no force-trace sampler reads does
nothing, which is what keeps the header off unless both halves are configured.

Trace id in responses: the W3C Trace Context Level 2 ``traceresponse`` value,
``00-<trace id>-<span id>-<flags>``, for HTTP response headers and gRPC trailing metadata.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from opentelemetry import trace
from opentelemetry.context import Context, create_key, get_value, set_value
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

FORCE_TRACE_HEADER = "visiontel-force-trace"
"""The request header (HTTP) or metadata key (gRPC) that asks for one request to be traced."""
FORCE_TRACE_ATTRIBUTE = "visiontel.force_trace"
"""Set to ``True`` on a span that is sampled only because its request asked to be."""
TRACE_RESPONSE_HEADER = "traceresponse"
"""W3C Trace Context Level 2 response header (and our gRPC trailing-metadata key)."""

_FORCE_KEY = create_key("visiontel-force-trace")
# The only value that asks: "1". Anything else ("true", "yes", "0", garbage) is ignored, so
# a proxy or client that sets the header by accident to some other value does not force.
_ASK = "1"
# A value longer than this is not "1" with some whitespace: skip stripping it.
_MAX_VALUE_CHARS = 16


def force_trace(context: Context | None = None) -> Context:
    """``context`` (default: the current one) marked as asking to be traced.

    For servers that start their spans themselves: pass the result as the parent context
    of the request's first span (``continue_frame(name, ctx)``, ``tracer.start_span(...,
    context=ctx)``). It is honoured only by a :class:`ForceTraceSampler`, within its rate
    limit; any other sampler ignores it.
    """
    return set_value(_FORCE_KEY, True, context)


def force_trace_requested(context: Context | None = None) -> bool:
    """Whether ``context`` (default: the current one) carries the force-trace flag."""
    return get_value(_FORCE_KEY, context) is True


def _asks(values: Iterable[str] | None) -> bool:
    if not values:
        return False
    for value in values:
        # The first field decides; a repeated header cannot sneak a "1" in second place.
        return isinstance(value, str) and len(value) <= _MAX_VALUE_CHARS and value.strip() == _ASK
    return False


class ForceTracePropagator(TextMapPropagator):
    """Reads ``visiontel-force-trace: 1`` into the extracted context; injects nothing.

    Registered as the ``visiontel_force_trace`` propagator, so
    ``OTEL_PROPAGATORS=tracecontext,baggage,visiontel_force_trace`` makes every
    OpenTelemetry server instrumentation (ASGI/FastAPI, WSGI, gRPC, ...) carry the request's
    flag to the sampler. It never writes the header downstream: the decision travels as
    the sampled flag of ``traceparent``, which a parent-based sampler downstream follows.
    """

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        # As OpenTelemetry's own propagators do: no context given means an empty one.
        if context is None:
            context = Context()
        try:
            values = getter.get(carrier, FORCE_TRACE_HEADER)
            asked = _asks(values)
        except Exception:  # a carrier that cannot be read must not fail the request
            return context
        return set_value(_FORCE_KEY, True, context) if asked else context

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        return None

    @property
    def fields(self) -> set[str]:
        return set()  # inject writes nothing


def _traceresponse(span: trace.Span | None = None) -> str | None:
    """``00-<trace id>-<span id>-<flags>`` of ``span`` (default: the current span), or
    None when it has no valid span context (no SDK installed, no span started)."""
    if span is None:
        span = trace.get_current_span()
    sc = span.get_span_context()
    if not sc.is_valid:
        return None
    return (
        f"00-{trace.format_trace_id(sc.trace_id)}-{trace.format_span_id(sc.span_id)}"
        f"-{int(sc.trace_flags) & 0xFF:02x}"
    )


def trace_response_headers(span: trace.Span | None = None) -> dict[str, str]:
    """``{"traceresponse": "00-<trace id>-<span id>-<flags>"}`` for ``span`` (default: the
    current span), to add to a response a handler builds; ``{}`` when there is no valid
    span. Sampled or not: the flags field says which (``01`` sampled, ``00`` not), and an
    unsampled request's trace id still finds its log lines."""
    value = _traceresponse(span)
    return {} if value is None else {TRACE_RESPONSE_HEADER: value}


class _ServicerContext(Protocol):
    """What :func:`set_grpc_trace_response` needs of a ``grpc.ServicerContext`` (sync or
    ``grpc.aio``); grpc itself is not imported."""

    def set_trailing_metadata(self, trailing_metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        raise NotImplementedError


def set_grpc_trace_response(context: _ServicerContext, span: trace.Span | None = None) -> bool:
    """Add ``traceresponse`` to the RPC's trailing metadata, keeping what the handler set.

    Call it inside the handler, while the request's span is current (or pass the span).
    Trailing metadata reaches the client with the status, so a failed call (an exception,
    ``context.abort(...)`` after this call) carries it too. Returns False, changing
    nothing, when there is no valid span.
    """
    value = _traceresponse(span)
    if value is None:
        return False
    existing: Iterable[tuple[str, str | bytes]] = ()
    # grpc's ServicerContext.trailing_metadata() (sync and aio) returns what was set so far;
    # set_trailing_metadata replaces it, so without this the handler's own entries are lost.
    getter = getattr(context, "trailing_metadata", None)
    if callable(getter):
        existing = getter() or ()
    kept = tuple((k, v) for k, v in existing if k != TRACE_RESPONSE_HEADER)
    context.set_trailing_metadata((*kept, (TRACE_RESPONSE_HEADER, value)))
    return True
