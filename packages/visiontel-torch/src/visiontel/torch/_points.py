"""Metric points that wait: each forward's values appended on the inference thread,
handed to the SDK a batch at a time.

An unsampled forward's duration, images and detections wait in deques until the next run
of later work or collection (``UnsampledPoints``); a sampled forward finished as later work
leaves its points, each with its span, until the end of that run (``SampledPoints``). A
batch that shares a histogram and attribute set goes into the SDK's storage in one step
(``_otel_private.fold_points``) where the gate allows, else one ``record`` per value.
"""

from __future__ import annotations

import collections
import itertools
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, overload

from opentelemetry import metrics, trace
from opentelemetry.context import Context

from visiontel.torch._otel_private import fold_points

if TYPE_CHECKING:
    from visiontel.torch._metrics import InferenceMetrics

UNSAMPLED_CONTEXT = trace.set_span_in_context(trace.INVALID_SPAN)
"""The context an unsampled forward's waiting points are recorded in: its span is not
sampled, so they carry no exemplar (the context current wherever they are recorded has
nothing to do with that forward)."""

_RECORD_EVERY = 256
"""Waiting points per batch that make a run of later work due (memory stays bounded where
no metric reader ever collects)."""


def record_points(
    histogram: metrics.Histogram,
    values: Sequence[float],
    attributes: dict[str, Any],
    context: Context,
    memo: dict[str, Any],
) -> None:
    """Record ``values`` under ``attributes`` in ``context``: folded into the SDK's storage
    in one step where the gate allows (exemplars as the SDK would keep them), else one
    ``record`` each. ``memo``: a dict the caller keeps for this histogram and attribute set.
    """
    _fold_or_record(histogram, values, attributes, (context,), memo)


def record_span_points(
    histogram: metrics.Histogram,
    values: Sequence[float],
    attributes: dict[str, Any],
    span: trace.Span,
    memo: dict[str, Any],
) -> None:
    """``record_points`` in the context of ``span`` (a sampled forward or stage, now)."""
    _fold_or_record(histogram, values, attributes, (trace.set_span_in_context(span),), memo)


class SpanContexts(Sequence[Context]):
    """The context of each of ``spans``, made when read: a run of later work's sampled
    points need their spans' contexts only for the exemplar filter, which answers from the
    span itself where it is trace-based (``fold_points``), and for the values offered to an
    exemplar reservoir, a few per batch. Each read makes a new context, as
    ``trace.set_span_in_context(span)`` would have when the point was added: on the same
    thread, in the same run of later work, so on the same current context."""

    __slots__ = ("spans",)

    def __init__(self, spans: Sequence[trace.Span]) -> None:
        self.spans = spans

    def __len__(self) -> int:
        return len(self.spans)

    @overload
    def __getitem__(self, index: int) -> Context: ...

    @overload
    def __getitem__(self, index: slice) -> SpanContexts: ...

    def __getitem__(self, index: int | slice) -> Context | SpanContexts:
        if isinstance(index, slice):
            return SpanContexts(self.spans[index])
        return trace.set_span_in_context(self.spans[index])


def _fold_or_record(
    histogram: metrics.Histogram,
    values: Sequence[float],
    attributes: dict[str, Any],
    contexts: Sequence[Context],
    memo: dict[str, Any],
) -> None:
    """``fold_points``, or where it declines, one ``record`` per value in its context
    (``contexts``: one for all values, or one per value)."""
    if fold_points(histogram, values, attributes, contexts, memo):
        return
    # one context for all: repeated (zip stops at the last value)
    per_value = contexts if len(contexts) == len(values) else itertools.repeat(contexts[0])
    for value, context in zip(values, per_value, strict=False):
        histogram.record(value, attributes, context=context)


def record_unsampled(
    histogram: metrics.Histogram,
    values: Sequence[float],
    attributes: dict[str, Any],
    memo: dict[str, Any],
) -> None:
    """``record_points`` with no sampled span in the context, so no exemplar."""
    record_points(histogram, values, attributes, UNSAMPLED_CONTEXT, memo)


class PointBatch:
    """One instrument's waiting points under one attribute set (one per model and metric)
    and what hands them to the SDK."""

    __slots__ = ("hand_over", "retired", "values")

    def __init__(self, hand_over: Callable[[list[float]], None]) -> None:
        self.hand_over = hand_over
        self.values: collections.deque[float] = collections.deque()
        self.retired = False
        """Its model's instrumentation is gone: no value comes any more."""


def _histogram_batch(histogram: metrics.Histogram, attributes: dict[str, Any]) -> PointBatch:
    memo: dict[str, Any] = {}  # where in the SDK's storage these go (fold_points)
    return PointBatch(lambda values: record_unsampled(histogram, values, attributes, memo))


class PointParts(NamedTuple):
    durations: collections.deque[float]
    images: collections.deque[float]
    detections: collections.deque[float]
    owner: UnsampledPoints
    record_every: int


class ForwardPoints:
    """One model's points of unsampled forwards, waiting: each forward's duration, its
    images and its detections per image are appends (any inference thread; a deque append
    is atomic), recorded by ``UnsampledPoints.record``."""

    __slots__ = ("_detections", "_durations", "_images", "_owner")

    def __init__(
        self,
        owner: UnsampledPoints,
        durations: PointBatch,
        images: PointBatch,
        detections: PointBatch,
    ) -> None:
        self._owner = owner
        self._durations, self._images = durations.values, images.values
        self._detections = detections.values

    def parts(self) -> PointParts:
        """The deques and the owner ``add`` uses (``_speedups.RootHooks`` adds the same
        way)."""
        return PointParts(
            self._durations, self._images, self._detections, self._owner, _RECORD_EVERY
        )

    def add(self, seconds: float, images: int, detections: Sequence[int] | None) -> None:
        durations = self._durations
        durations.append(seconds)
        if images:
            self._images.append(images)
        if detections:
            self._detections.extend(detections)
        if not len(durations) % _RECORD_EVERY and self._owner.due is not None:
            self._owner.due()  # memory stays bounded where no reader collects


class UnsampledPoints:
    """Metric points of unsampled forwards (spans in batch processors), added on the
    inference thread with deque appends and recorded together by the next run of later
    work or collection: a batch that shares an attribute set goes into the SDK's storage in
    one step (``_otel_private.fold_points``), not one ``record`` per value.

    Appends come from any inference thread; ``record`` runs under the resolver's later-work
    lock, one thread at a time, and takes only what it counted, so no append is lost. A
    batch stays here after its model's instrumentation is gone, until its last points are
    recorded (an uninstrumented model's last forwards still count).
    """

    def __init__(self) -> None:
        self._batches: dict[int, PointBatch] = {}
        self.due: Callable[[], None] | None = None
        """Makes a run of later work due (set by the runtime: the resolver's queue)."""

    def forward_points(
        self,
        metrics: InferenceMetrics,
        metric_attributes: dict[str, Any],
        image_attributes: dict[str, Any],
        owner: object,
    ) -> ForwardPoints:
        """Where ``owner``'s unsampled forwards leave their points; retired (recorded, then
        forgotten) once ``owner`` is garbage."""
        add_images = metrics.images.adder(image_attributes)
        batches = (
            _histogram_batch(metrics.duration, metric_attributes),
            PointBatch(lambda images: add_images(int(sum(images)))),  # one total per batch
            _histogram_batch(metrics.detections, image_attributes),
        )
        for made in batches:
            self._batches[id(made)] = made
            weakref.finalize(owner, _retire, made)
        return ForwardPoints(self, *batches)

    def waiting(self) -> bool:
        return any(batch.values for batch in list(self._batches.values()))

    def record(self) -> None:
        """Hand every waiting point to the SDK; forget retired batches once empty."""
        for key, batch in list(self._batches.items()):
            retired = batch.retired  # read first: a value added before retiring is seen below
            waiting = batch.values
            if waiting:  # (most batches are empty at most calls: no list made for them)
                batch.hand_over([waiting.popleft() for _ in range(len(waiting))])
            if retired and not waiting:
                self._batches.pop(key, None)

    def clear(self) -> None:
        """Forget the waiting points (a forked child: they belong to the parent)."""
        for batch in list(self._batches.values()):
            batch.values.clear()


class SampledPoints:
    """Metric points of sampled forwards and stages finished as later work, each with its
    span (its exemplar's), recorded together at the end of that run of later work:
    the points of one histogram and attribute set go into the SDK's storage in one step,
    each value offered as an exemplar with its own context, as ``record`` would offer it.

    Only later work adds here, under the resolver's later-work lock, and the run that added
    them records them before it ends (or every ``_RECORD_EVERY`` points on a long run), so
    nothing waits past the run: a collection or ``flush`` that drains the later work sees
    them.
    """

    def __init__(self) -> None:
        self._waiting: list[tuple[Any, dict[str, Any], dict[str, Any], float, trace.Span]] = []

    def add(
        self,
        histogram: metrics.Histogram,
        values: Sequence[float],
        attributes: dict[str, Any],
        span: trace.Span,
        memo: dict[str, Any],
    ) -> None:
        """As ``record_span_points(histogram, values, attributes, span, memo)``, at the end
        of this run of later work."""
        waiting = self._waiting
        for value in values:
            waiting.append((histogram, attributes, memo, value, span))

    def due(self) -> bool:
        """Enough points wait that a long run of later work should record them now."""
        return len(self._waiting) >= _RECORD_EVERY

    def record(self) -> None:
        """Hand every waiting point to the SDK, a batch per histogram, attributes and memo
        (each in the order added)."""
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        batches: dict[tuple[int, int, int], tuple[Any, Any, Any, list[float], list[trace.Span]]]
        batches = {}
        for histogram, attributes, memo, value, span in waiting:
            key = (id(histogram), id(attributes), id(memo))
            batch = batches.get(key)
            if batch is None:
                batch = batches[key] = (histogram, attributes, memo, [], [])
            batch[3].append(value)
            batch[4].append(span)
        for histogram, attributes, memo, values, spans in batches.values():
            _fold_or_record(histogram, values, attributes, SpanContexts(spans), memo)

    def clear(self) -> None:
        """Forget the waiting points (a forked child: they belong to the parent)."""
        self._waiting = []


def _retire(batch: PointBatch) -> None:
    batch.retired = True
