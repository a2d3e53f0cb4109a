"""Frame spans at each stage and the capture-to-result latency histogram."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from visiontel.propagation._diag import internal_error
from visiontel.propagation._frame import FrameIdentity, get_frame, set_frame
from visiontel.propagation.version import __version__

TRACER_NAME = "visiontel.propagation"
ATTR_STREAM = "visiontel.frame.stream_id"
ATTR_SEQUENCE = "visiontel.frame.sequence"
ATTR_AGE = "visiontel.frame.age"
"""Seconds between capture and the start of the span carrying it."""
LATENCY_METRIC = "visiontel.frame.latency"
# Vision pipelines care from a few milliseconds (one stage) to seconds (backlog).
_LATENCY_BUCKETS = (
    0.005, 0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip


def _tracer(tracer: Tracer | None) -> Tracer:
    return tracer if tracer is not None else trace.get_tracer(TRACER_NAME, __version__)


def frame_attributes(frame: FrameIdentity, now_ns: int | None = None) -> dict[str, AttributeValue]:
    """Span attributes naming ``frame`` and its age now."""
    return {
        ATTR_STREAM: frame.stream_id,
        ATTR_SEQUENCE: frame.sequence,
        ATTR_AGE: frame.age_s(now_ns),
    }


@contextmanager
def start_frame(
    name: str,
    frame: FrameIdentity,
    *,
    tracer: Tracer | None = None,
    parent: Context | None = None,
    kind: SpanKind = SpanKind.PRODUCER,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[Span]:
    """First span of a frame's trace, starting at its capture time.

    Each frame gets a trace of its own (the current span, e.g. a long-running
    "decode stream" span, is not its parent) unless ``parent`` is given. Inside the
    block the current context carries ``frame``, so every ``inject_*`` call sends it.
    """
    base = trace.set_span_in_context(INVALID_SPAN) if parent is None else parent
    ctx = set_frame(frame, base)
    frame = get_frame(ctx) or frame  # as stored: credentials stripped from URL stream ids
    token = otel_context.attach(ctx)
    try:
        try:
            span = _tracer(tracer).start_span(
                name, kind=kind, start_time=frame.capture_ns, attributes=attributes
            )
            if span.is_recording():
                span.set_attributes({ATTR_STREAM: frame.stream_id, ATTR_SEQUENCE: frame.sequence})
        except Exception:  # never let tracing stop the frame
            internal_error("start_frame")
            span = INVALID_SPAN
        with trace.use_span(span, end_on_exit=True):
            yield span
    finally:
        otel_context.detach(token)


@contextmanager
def continue_frame(
    name: str,
    context: Context,
    *,
    tracer: Tracer | None = None,
    kind: SpanKind = SpanKind.CONSUMER,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[Span]:
    """A stage's span for a frame received with ``context`` (from any ``extract_*``).

    The span joins the frame's trace, carries the frame's age, and stays current in
    the block together with the frame identity, so a further ``inject_*`` passes both
    on. For an unsampled frame the SDK hands back a non-recording span and nothing
    else is computed.
    """
    token = otel_context.attach(context)
    try:
        try:
            span = _tracer(tracer).start_span(name, kind=kind, attributes=attributes)
            if span.is_recording():
                frame = get_frame(context)
                if frame is not None:
                    span.set_attributes(frame_attributes(frame))
        except Exception:  # never let tracing stop the frame
            internal_error("continue_frame")
            span = INVALID_SPAN
        with trace.use_span(span, end_on_exit=True):
            yield span
    finally:
        otel_context.detach(token)


class FrameLatency:
    """Records ``visiontel.frame.latency`` (capture to result, seconds) at the sink.

    ``meter_provider`` defaults to the global one. The module-level
    :func:`record_frame_latency` uses a shared instance bound to the global provider.
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        self._meter_provider = meter_provider
        self._histogram: metrics.Histogram | None = None

    def _get(self) -> metrics.Histogram:
        # Created on first use so a provider installed after import is honoured.
        if self._histogram is None:
            meter = metrics.get_meter(TRACER_NAME, __version__, self._meter_provider)
            self._histogram = meter.create_histogram(
                LATENCY_METRIC,
                unit="s",
                description="Time from a frame's capture to its result at the sink",
                explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
            )
        return self._histogram

    def record(
        self,
        frame: FrameIdentity | Context | None = None,
        *,
        now_ns: int | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> float | None:
        """Record capture-to-now for ``frame`` and return it in seconds.

        ``frame`` is an identity, a context carrying one, or None for the current
        context. Every frame is recorded, sampled or not (metrics are not sampled).
        Returns None, recording nothing, when there is no frame identity. A clock
        that puts capture in the future records 0 and returns the negative value.
        """
        try:
            identity = frame if isinstance(frame, FrameIdentity) else get_frame(frame)
            if identity is None:
                return None
            now = time.time_ns() if now_ns is None else now_ns
            latency = (now - identity.capture_ns) / 1e9
            attrs: dict[str, AttributeValue] = {ATTR_STREAM: identity.stream_id}
            if attributes:
                attrs.update(attributes)
            self._get().record(max(latency, 0.0), attrs)
            return latency
        except Exception:
            internal_error("FrameLatency.record")
            return None


_default_latency = FrameLatency()
record_frame_latency = _default_latency.record
"""Record a frame's capture-to-result latency with the global meter provider."""
