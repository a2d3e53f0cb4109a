"""Fan-in: one span for a batched inference, linked to every frame in the batch.

Follows the messaging batch conventions: the batch span carries
``messaging.batch.message_count`` and one link per frame. The SDK keeps at most
``OTEL_SPAN_LINK_COUNT_LIMIT`` links per span (128 by default) and drops the rest
without a word, so links past ``max_links`` go on child "link chunk" spans of the
batch span instead, ``max_links`` per chunk. Each sampled frame's own trace also
gets a short span that links back to the batch, so the batch is visible from both
sides whatever its size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanContext, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from visiontel.propagation import _otel_private, _streams
from visiontel.propagation._diag import internal_error, limits
from visiontel.propagation._frame import get_frame
from visiontel.propagation._spans import _tracer
from visiontel.propagation._stage import frame_attributes

_logger = logging.getLogger("visiontel.propagation")

BATCH_COUNT = "messaging.batch.message_count"
ATTR_LINKED = "visiontel.batch.linked_frames"
ATTR_CHUNKS = "visiontel.batch.link_chunks"
ATTR_NO_CONTEXT = "visiontel.batch.frames_without_context"
ATTR_INDEX = "visiontel.batch.index"
ATTR_CHUNK = "visiontel.batch.chunk"


@dataclass
class Batch:
    """What :func:`batch_span` yields."""

    span: Span
    """The batch span (current inside the block)."""
    contexts: list[Context]
    """One context per input frame, in order, to continue each frame's trace after the
    batch (e.g. ``continue_frame`` or ``inject_*`` for the next hop). For a sampled
    frame it holds the frame's batch-member span; otherwise the frame's own context."""
    linked: int = 0
    """Frames linked from the batch span itself."""
    chunks: int = 0
    """Link-chunk spans created for frames past ``max_links``."""
    without_context: int = 0
    """Frames that arrived with no valid trace context (nothing to link)."""
    _member_spans: list[Span] = field(default_factory=list, repr=False)


@contextmanager
def batch_span(
    frames: Iterable[Context],
    name: str = "infer batch",
    *,
    tracer: Tracer | None = None,
    kind: SpanKind = SpanKind.CONSUMER,
    member_spans: bool = True,
    max_links: int | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[Batch]:
    """Open one span for a batch of frames, linking every frame's context.

    ``frames`` are the contexts the frames arrived with (``extract_*`` results). The
    batch span's parent is the current context, not any frame: a batch belongs to
    no single frame's trace. With ``member_spans`` (default) every sampled frame's
    trace gets a ``"<name> member"`` span, linked to the batch span and lasting as
    long as it; frames past ``max_links`` get one whatever ``member_spans`` says.
    ``max_links`` defaults to ``OTEL_SPAN_LINK_COUNT_LIMIT`` (128), or the SDK
    tracer's own link limit where that is lower.

    Every frame, sampled or not, counts in this hop's stream health
    (``visiontel.frames.received`` / ``visiontel.frames.lost``, see ``observe_frame``).
    """
    tracer = _tracer(tracer)
    contexts = list(frames)
    observe = _streams._default.observe  # never raises
    for context in contexts:
        observe(context)
    per_span = max_links if max_links is not None else _link_limit(tracer)
    if per_span < 1:
        raise ValueError(f"max_links must be at least 1, got {per_span}")
    try:
        batch = _open(
            tracer, contexts, name=name, kind=kind, member_spans=member_spans,
            per_span=per_span, attributes=attributes,
        )  # fmt: skip
    except Exception:  # a broken SDK must not stop the inference
        internal_error("batch_span")
        batch = Batch(INVALID_SPAN, list(contexts))
    span = batch.span
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=True):
            yield batch
    finally:
        end = time.time_ns()
        try:
            for member in batch._member_spans:
                member.end(end)
            span.end(end)
        except Exception:
            internal_error("batch_span end")


def _link_limit(tracer: Tracer) -> int:
    """Links one span may keep: ours, or the SDK tracer's own if it says less.

    The SDK's limit can be set in code (``TracerProvider(span_limits=...)``), not
    only through ``OTEL_SPAN_LINK_COUNT_LIMIT``; it is read where the tracer exposes
    it, so links past it go to chunk spans instead of being dropped by the SDK. That
    read is an SDK internal: with the fast paths off (an OpenTelemetry release newer
    than the tested ones) only the environment's limit is known.
    """
    ours = limits().max_links
    sdk = _otel_private.sdk_link_limit(tracer)
    return ours if sdk is None else min(ours, sdk)


def _open(
    tracer: Tracer,
    contexts: list[Context],
    *,
    name: str,
    kind: SpanKind,
    member_spans: bool,
    per_span: int,
    attributes: Mapping[str, AttributeValue] | None,
) -> Batch:
    links: list[Link] = []
    sampled: list[int] = []  # indexes of sampled frames, in order
    span_contexts = _otel_private.span_contexts_of(contexts)
    new_link = _otel_private.new_link
    for index, span_context in enumerate(span_contexts):
        if span_context.is_valid:
            if span_context.trace_flags & 1:  # TraceFlags.sampled without the property call
                sampled.append(index)
            links.append(new_link(span_context))
    # First frame whose link does not fit on the batch span (only past the limit).
    overflow_from = _nth_linked(span_contexts, per_span) if len(links) > per_span else len(contexts)
    start = time.time_ns()
    linked = min(len(links), per_span)
    chunk_count = max(0, (len(links) - 1) // per_span)
    attrs: dict[str, AttributeValue] = dict(attributes) if attributes else {}
    attrs[BATCH_COUNT] = len(contexts)
    attrs[ATTR_LINKED] = linked
    attrs[ATTR_CHUNKS] = chunk_count
    attrs[ATTR_NO_CONTEXT] = len(contexts) - len(links)
    span = tracer.start_span(
        name,
        kind=kind,
        attributes=attrs,
        links=links if len(links) <= per_span else links[:per_span],
        start_time=start,
    )
    batch = Batch(span, list(contexts), linked, chunk_count, len(contexts) - len(links))
    if chunk_count and span.is_recording():
        _logger.debug(
            "batch of %d frames: %d links on %s, %d more on %d link-chunk spans",
            len(contexts), per_span, name, len(links) - per_span, chunk_count,
        )  # fmt: skip
        parent = trace.set_span_in_context(span)
        for chunk in range(1, chunk_count + 1):
            part = links[chunk * per_span : (chunk + 1) * per_span]
            tracer.start_span(
                f"{name} links", context=parent, kind=SpanKind.INTERNAL, links=part,
                attributes={BATCH_COUNT: len(contexts), ATTR_CHUNK: chunk}, start_time=start,
            ).end(start)  # fmt: skip
    # Unsampled frames get no member span: they cost nothing past their link. Without
    # member_spans, only frames whose link went to a chunk span get one.
    first_member = 0 if member_spans else overflow_from
    if not sampled or sampled[-1] < first_member:
        return batch
    batch_link = [Link(span.get_span_context())]
    for index in sampled:
        if index < first_member:
            continue
        ctx = contexts[index]
        member_attrs: dict[str, AttributeValue] = {BATCH_COUNT: len(contexts), ATTR_INDEX: index}
        frame = get_frame(ctx)
        if frame is not None:
            member_attrs.update(frame_attributes(frame, start))
        member = tracer.start_span(
            f"{name} member", context=ctx, kind=SpanKind.INTERNAL, links=batch_link,
            attributes=member_attrs, start_time=start,
        )  # fmt: skip
        batch._member_spans.append(member)
        batch.contexts[index] = trace.set_span_in_context(member, ctx)
    return batch


def _nth_linked(span_contexts: list[SpanContext], n: int) -> int:
    """Index of the frame that gives the batch its ``n``-th link (0-based)."""
    seen = 0
    for index, span_context in enumerate(span_contexts):
        if span_context.is_valid:
            if seen == n:
                return index
            seen += 1
    return len(span_contexts)
