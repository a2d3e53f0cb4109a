"""Frame spans at each stage and the capture-to-result latency histogram."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, ContextDecorator
from contextvars import Token
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
)
from opentelemetry.util.types import AttributeValue

from visiontel._support._otel_private import context_slot
from visiontel._support.env import env_int
from visiontel._support.livespans import add_plain_attributes
from visiontel.propagation import _streams
from visiontel.propagation._diag import internal_error
from visiontel.propagation._frame import FrameIdentity, get_frame, set_frame
from visiontel.propagation._spans import TRACER_NAME, live_or_tracer_span
from visiontel.propagation.version import __version__

ATTR_STREAM = "visiontel.frame.stream_id"
ATTR_SEQUENCE = "visiontel.frame.sequence"
ATTR_AGE = "visiontel.frame.age"
"""Seconds between capture and the start of the span carrying it."""
LATENCY_METRIC = "visiontel.frame.latency"
SAMPLE_EVERY_ENV = "VISIONTEL_FRAME_SAMPLE_EVERY"
# Vision pipelines care from a few milliseconds (one stage) to seconds (backlog).
_LATENCY_BUCKETS = (
    0.005, 0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip


_sample_every: int | None = None  # read from the environment on first use


def frame_sample_every() -> int:
    """N of the 1-in-N frame sampling (``VISIONTEL_FRAME_SAMPLE_EVERY``, default 1: all)."""
    global _sample_every
    if _sample_every is None:
        _sample_every = env_int(SAMPLE_EVERY_ENV, 1, minimum=1)
    return _sample_every


def _reset_sampling() -> None:
    """Read ``VISIONTEL_FRAME_SAMPLE_EVERY`` afresh on the next frame (tests)."""
    global _sample_every
    _sample_every = None


def _sampled_out(parent: Context) -> Span:
    """The span of a frame the 1-in-N rule leaves out: valid ids, sampled flag off.

    Not recorded, and every ``inject_*`` sends it with the sampled flag off, so
    ``ParentBased`` samplers downstream leave the frame out too. It keeps a parent's
    trace id, so the frame stays in that trace (unrecorded) as its child would.
    """
    parent_context = trace.get_current_span(parent).get_span_context()
    trace_id = parent_context.trace_id if parent_context.is_valid else 0
    while not trace_id:
        trace_id = random.getrandbits(128)
    span_id = 0
    while not span_id:
        span_id = random.getrandbits(64)
    return NonRecordingSpan(
        SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    )


def frame_attributes(frame: FrameIdentity, now_ns: int | None = None) -> dict[str, AttributeValue]:
    """Span attributes naming ``frame`` and its age now."""
    return {
        ATTR_STREAM: frame.stream_id,
        ATTR_SEQUENCE: frame.sequence,
        ATTR_AGE: frame.age_s(now_ns),
    }


class _FrameScope(ContextDecorator):
    """The context manager :func:`start_frame` and :func:`continue_frame` return.

    A class, not a ``contextmanager`` generator around ``trace.use_span``: every frame
    enters one at every hop, and the two generators cost a third of the frame span's own
    instructions besides the SDK's (docs/benchmarks.md, issue 16). An exception leaving the
    block still goes through ``trace.use_span``, so the span records it and takes the error
    status exactly as the installed API does it. As with a ``contextmanager`` object, each
    ``with`` needs its own call (a decorated function gets a fresh scope per call).
    """

    _what = ""  # the entry point, for the internal-error report
    _outer: Token[Context]
    _inner: Token[Context]
    _span: Span
    _slot: tuple[Any, str, type] | None

    def _frame_context(self) -> Context:
        """The context the block runs in (errors here are the caller's: they propagate)."""
        raise NotImplementedError

    def _start_span(self) -> Span:
        """The frame's span, started in ``_frame_context()`` (errors are reported)."""
        raise NotImplementedError

    def __enter__(self) -> Span:
        # The context's ContextVar set directly where the gate allows: what attach() does,
        # without its calls (two per attach and per detach, two of each a frame).
        slot = context_slot()
        frame_context = self._frame_context()
        outer = otel_context.attach(frame_context) if slot is None else slot[0].set(frame_context)
        try:
            try:
                span = self._start_span()
            except Exception:  # never let tracing stop the frame
                internal_error(self._what)
                span = INVALID_SPAN
            if slot is None:
                self._inner = otel_context.attach(trace.set_span_in_context(span))
            else:  # set_span_in_context's copy, with the span under its key
                variable, span_key, context_class = slot
                values = dict(variable.get())
                values[span_key] = span
                self._inner = variable.set(context_class(values))
        except BaseException:
            _reset(slot, outer)
            raise
        self._outer, self._span, self._slot = outer, span, slot
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span, slot = self._span, self._slot
        try:
            _reset(slot, self._inner)
            if exc is None:
                span.end()
            else:  # the API's own handling: record the exception, set the status, end
                handling = trace.use_span(span, end_on_exit=True)
                handling.__enter__()
                handling.__exit__(exc_type, exc, traceback)
        finally:
            _reset(slot, self._outer)


def _reset(slot: tuple[Any, str, type] | None, token: Token[Context]) -> None:
    """``otel_context.detach(token)``: the variable reset directly where it was set so."""
    if slot is not None:
        try:
            slot[0].reset(token)
            return
        except (ValueError, RuntimeError):  # another context's token, or one used already
            pass  # detach fails the same way, and logs it as the API does
    otel_context.detach(token)


class _StartFrame(_FrameScope):
    _what = "start_frame"

    def __init__(  # noqa: PLR0917 (start_frame's arguments)
        self,
        name: str,
        frame: FrameIdentity,
        tracer: Tracer | None,
        parent: Context | None,
        kind: SpanKind,
        attributes: Mapping[str, AttributeValue] | None,
    ) -> None:
        self._args = (name, frame, tracer, parent, kind, attributes)

    def _recreate_cm(self) -> _StartFrame:
        return _StartFrame(*self._args)

    def _frame_context(self) -> Context:
        frame, parent = self._args[1], self._args[3]
        self._base = trace.set_span_in_context(INVALID_SPAN) if parent is None else parent
        ctx = set_frame(frame, self._base)
        self._frame = get_frame(ctx) or frame  # as stored: credentials stripped from URLs
        return ctx

    def _start_span(self) -> Span:
        name, _, tracer, _, kind, attributes = self._args
        frame = self._frame
        every = _sample_every if _sample_every is not None else frame_sample_every()
        if every > 1 and frame.sequence % every:
            span = _sampled_out(self._base)
        else:
            span = live_or_tracer_span(tracer, name, kind, attributes, frame.capture_ns)
        if span.is_recording():
            span.set_attributes({ATTR_STREAM: frame.stream_id, ATTR_SEQUENCE: frame.sequence})
        return span


class _ContinueFrame(_FrameScope):
    _what = "continue_frame"

    def __init__(
        self,
        name: str,
        context: Context,
        tracer: Tracer | None,
        kind: SpanKind,
        attributes: Mapping[str, AttributeValue] | None,
    ) -> None:
        self._args = (name, context, tracer, kind, attributes)

    def _recreate_cm(self) -> _ContinueFrame:
        return _ContinueFrame(*self._args)

    def _frame_context(self) -> Context:
        return self._args[1]

    def _start_span(self) -> Span:
        name, context, tracer, kind, attributes = self._args
        frame = get_frame(context)
        if frame is not None:
            _streams._default.observe_stored(frame)  # never raises
        span = live_or_tracer_span(tracer, name, kind, attributes)
        if frame is not None and span.is_recording():
            add_plain_attributes(span, frame_attributes(frame))  # a str, an int, a float
        return span


def start_frame(
    name: str,
    frame: FrameIdentity,
    *,
    tracer: Tracer | None = None,
    parent: Context | None = None,
    kind: SpanKind = SpanKind.PRODUCER,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> AbstractContextManager[Span]:
    """First span of a frame's trace, starting at its capture time.

    Each frame gets a trace of its own (the current span, e.g. a long-running
    "decode stream" span, is not its parent) unless ``parent`` is given. Inside the
    block the current context carries ``frame``, so every ``inject_*`` call sends it.

    With ``VISIONTEL_FRAME_SAMPLE_EVERY=N`` only frames whose sequence is a multiple of
    N go to the tracer (whose sampler still decides); the others get a non-recording
    span with the sampled flag off, which downstream ``ParentBased`` samplers follow.
    Metrics downstream count every frame either way.
    """
    return _StartFrame(name, frame, tracer, parent, kind, attributes)


def continue_frame(
    name: str,
    context: Context,
    *,
    tracer: Tracer | None = None,
    kind: SpanKind = SpanKind.CONSUMER,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> AbstractContextManager[Span]:
    """A stage's span for a frame received with ``context`` (from any ``extract_*``).

    The span joins the frame's trace, carries the frame's age, and stays current in
    the block together with the frame identity, so a further ``inject_*`` passes both
    on. For an unsampled frame the SDK hands back a non-recording span and nothing
    else is computed. Sampled or not, the frame counts in this hop's stream health
    (``visiontel.frames.received`` / ``visiontel.frames.lost``, see :func:`observe_frame`).
    """
    return _ContinueFrame(name, context, tracer, kind, attributes)


class FrameLatency:
    """Records ``visiontel.frame.latency`` (capture to result, seconds) at the sink.

    ``meter_provider`` defaults to the global one. The module-level
    :func:`record_frame_latency` uses a shared instance bound to the global provider.
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        self._meter_provider = meter_provider
        self._histogram: metrics.Histogram | None = None
        # The shared hop's stream health unless this instance has a provider of its own.
        own = meter_provider is not None and meter_provider is not metrics.get_meter_provider()
        self._health = _streams.StreamHealth(meter_provider) if own else None

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
        The frame also counts in the hop's stream health (once, however many stages
        of the hop see it): the shared one, or with ``meter_provider`` given, one of
        this instance's own on that provider.
        """
        try:
            identity = frame if isinstance(frame, FrameIdentity) else get_frame(frame)
            if identity is None:
                return None
            (self._health or _streams._default).observe(identity)
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
