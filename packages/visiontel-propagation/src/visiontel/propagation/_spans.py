"""The spans a frame makes at every hop: live spans where the gate allows, else the tracer's."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from visiontel._support.livespans import LiveSpans
from visiontel._support.tracerspans import live_spans_for
from visiontel.propagation._diag import internal_error
from visiontel.propagation.version import __version__

TRACER_NAME = "visiontel.propagation"

_own_spans: tuple[object, LiveSpans] | None = None  # the global provider's, for our tracer
_NO_ATTRIBUTES: Mapping[str, AttributeValue] = {}


def _tracer(tracer: Tracer | None) -> Tracer:
    return tracer if tracer is not None else trace.get_tracer(TRACER_NAME, __version__)


def _tracer_span(  # noqa: PLR0917 (``live_or_tracer_span``'s arguments)
    tracer: Tracer | None,
    name: str,
    kind: SpanKind,
    attributes: Mapping[str, AttributeValue] | None,
    start_time: int | None,
    context: Context | None,
) -> Span:
    return _tracer(tracer).start_span(
        name, context=context, kind=kind, attributes=attributes, start_time=start_time
    )


def live_or_tracer_span(  # noqa: PLR0917 (positional: called once per frame and hop)
    tracer: Tracer | None,
    name: str,
    kind: SpanKind,
    attributes: Mapping[str, AttributeValue] | None,
    start_time: int | None = None,
    context: Context | None = None,
) -> Span:
    """A span under the span of ``context`` (default: the current one): a live span
    (``visiontel._support.livespans``, a third of an SDK span's cost) where the gate lets
    one stand in for the tracer's, else the tracer's. Errors propagate."""
    global _own_spans
    if tracer is None:
        provider = trace.get_tracer_provider()
        if _own_spans is None or _own_spans[0] is not provider:
            scope = (TRACER_NAME, __version__, None)
            _own_spans = (provider, LiveSpans(provider, _tracer(None), scope))
        spans: LiveSpans | None = _own_spans[1]
    else:
        spans = live_spans_for(tracer)
    if spans is None:
        return _tracer_span(tracer, name, kind, attributes, start_time, context)
    return spans.start(name, attributes or _NO_ATTRIBUTES, start_time, context=context, kind=kind)


def start_span(
    name: str,
    *,
    tracer: Tracer | None = None,
    context: Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue] | None = None,
    start_time: int | None = None,
) -> Span:
    """``tracer.start_span(name, context, kind, attributes, start_time)``, cheaper, for a
    span of yours that every frame makes (the client call that sends its result, a
    message it is published in). Not made current; end it yourself, from any thread (for
    an asynchronous call, in its done callback)::

        span = vp.start_span("send result", tracer=tracer, kind=SpanKind.CLIENT)
        vp.inject_grpc(metadata, trace.set_span_in_context(span))
        future = stub.Send.future(result, metadata=metadata)
        future.add_done_callback(lambda _: span.end())

    ``tracer`` defaults to visiontel-propagation's own. Where it is the global SDK
    provider's and the SDK's start-up work cannot change the outcome (the gate that frame
    spans use: docs/architecture.md), the span is built directly, at about a third of the
    SDK's cost; exported, it is the span the tracer would have made. Anything asked of it
    beyond plain attributes and its end hands it to the SDK first. Any other tracer makes
    its own span.
    """
    try:
        return live_or_tracer_span(tracer, name, kind, attributes, start_time, context)
    except Exception:  # never let tracing stop the frame: the tracer's own span instead
        internal_error("start_span")
        return _tracer_span(tracer, name, kind, attributes, start_time, context)
