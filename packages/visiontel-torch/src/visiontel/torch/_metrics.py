"""Inference metrics and detection counting.

Counting detections reads only tensor *shapes*: ``len(boxes)`` or ``tensor.shape[0]`` never
copies data to the host, so it never waits for the GPU.
"""

from __future__ import annotations

import collections
import itertools
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from opentelemetry import metrics, trace
from opentelemetry.context import Context

from visiontel.torch import _inputs
from visiontel.torch._inputs import tensor_type
from visiontel.torch._otel_private import fold_points
from visiontel.torch.version import SCHEMA_URL, __version__

DetectionCounter = Callable[[Any], "Sequence[int] | None"]
"""Maps a model output to detections per image (one int per image), or ``None`` to skip."""

# Bucket boundaries chosen for vision inference: 0.5 ms to 10 s.
_DURATION_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_DETECTION_BUCKETS = (0, 1, 2, 3, 5, 8, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)


class InferenceMetrics:
    """The instruments shared by every instrumented model of one meter provider."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        meter = metrics.get_meter(
            "visiontel.torch",
            __version__,
            meter_provider,
            schema_url=SCHEMA_URL,
        )
        self.duration = _histogram(
            meter,
            "visiontel.inference.duration",
            "s",
            "Duration of an inference stage (the model forward is stage 'inference').",
            _DURATION_BUCKETS,
        )
        self.images = _ImageCounter(meter)
        self.detections = _histogram(
            meter,
            "visiontel.inference.detections",
            "{detection}",
            "Detections per image in the model output.",
            _DETECTION_BUCKETS,
        )
        self.layer_duration = _histogram(
            meter,
            "visiontel.layer.duration",
            "s",
            "Host duration of layer calls beyond the per-forward layer span budget.",
            _DURATION_BUCKETS,
        )
        self.unsampled = UnsampledPoints()
        self.sampled = SampledPoints()
        self.dropped = meter.create_counter(
            "visiontel.torch.dropped",
            "{forward}",
            "Forward passes whose layer detail was dropped because the resolver was full.",
        )

    def record_detections(
        self, counts: Sequence[int], attributes: dict[str, Any], context: Context | None
    ) -> int:
        total = 0
        for count in counts:
            self.detections.record(count, attributes, context=context)
            total += count
        return total


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
    span's context (its exemplar), recorded together at the end of that run of later work:
    the points of one histogram and attribute set go into the SDK's storage in one step,
    each value offered as an exemplar with its own context, as ``record`` would offer it.

    Only later work adds here, under the resolver's later-work lock, and the run that added
    them records them before it ends (or every ``_RECORD_EVERY`` points on a long run), so
    nothing waits past the run: a collection or ``flush`` that drains the later work sees
    them.
    """

    def __init__(self) -> None:
        self._waiting: list[tuple[Any, dict[str, Any], dict[str, Any], float, Context]] = []

    def add(
        self,
        histogram: metrics.Histogram,
        values: Sequence[float],
        attributes: dict[str, Any],
        context: Context,
        memo: dict[str, Any],
    ) -> None:
        """As ``record_points(histogram, values, attributes, context, memo)``, at the end of
        this run of later work."""
        waiting = self._waiting
        for value in values:
            waiting.append((histogram, attributes, memo, value, context))

    def due(self) -> bool:
        """Enough points wait that a long run of later work should record them now."""
        return len(self._waiting) >= _RECORD_EVERY

    def record(self) -> None:
        """Hand every waiting point to the SDK, a batch per histogram, attributes and memo
        (each in the order added)."""
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        batches: dict[tuple[int, int, int], tuple[Any, Any, Any, list[float], list[Context]]]
        batches = {}
        for histogram, attributes, memo, value, context in waiting:
            key = (id(histogram), id(attributes), id(memo))
            batch = batches.get(key)
            if batch is None:
                batch = batches[key] = (histogram, attributes, memo, [], [])
            batch[3].append(value)
            batch[4].append(context)
        for histogram, attributes, memo, values, contexts in batches.values():
            _fold_or_record(histogram, values, attributes, contexts, memo)

    def clear(self) -> None:
        """Forget the waiting points (a forked child: they belong to the parent)."""
        self._waiting = []


def _retire(batch: PointBatch) -> None:
    batch.retired = True


class _ImageCounter:
    """``visiontel.inference.images``: summed in process, reported by an observable counter.

    The count needs no exemplar, and adding to a local total costs a twentieth of a
    synchronous ``Counter.add`` on every forward; the SDK reads the totals at collection.
    """

    def __init__(self, meter: metrics.Meter) -> None:
        self.before_collect: Callable[[], None] | None = None
        """Runs first at every collection: the resolver finishes pending metric points."""
        self._lock = threading.Lock()
        self._totals: dict[frozenset[tuple[str, Any]], list[Any]] = {}
        meter.create_observable_counter(
            "visiontel.inference.images",
            callbacks=[self._observe],
            unit="{image}",
            description="Images passed through the model.",
        )

    def adder(self, attributes: dict[str, Any]) -> Callable[[int], None]:
        """A function that adds images under ``attributes`` (fixed for the adder's life)."""
        lock = self._lock
        with lock:
            cell = self._totals.setdefault(frozenset(attributes.items()), [0, dict(attributes)])

        def add(images: int) -> None:
            with lock:
                cell[0] += images

        return add

    def _observe(self, _options: metrics.CallbackOptions) -> list[metrics.Observation]:
        # The SDK runs observable callbacks before it reads the histograms' storage, so the
        # points still queued as later work are recorded in time for this collection.
        if self.before_collect is not None:
            self.before_collect()
        with self._lock:
            totals = list(self._totals.values())
        # a model that has seen no image yet reports no point, as a Counter never added to
        return [metrics.Observation(total, attrs) for total, attrs in totals if total]


def _histogram(
    meter: metrics.Meter, name: str, unit: str, description: str, buckets: Sequence[float]
) -> metrics.Histogram:
    try:
        return meter.create_histogram(
            name, unit, description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # opentelemetry-api older than 1.23 has no bucket advisory
        return meter.create_histogram(name, unit, description)


def count_detections(output: Any) -> Sequence[int] | None:
    """Detections per image for the output formats vision models commonly return.

    - torchvision detection models: ``list[dict]`` with a ``"boxes"`` tensor per image;
    - objects with a ``boxes`` attribute per image (e.g. Ultralytics ``Results``);
    - raw post-NMS tensors: ``N×6`` (x1, y1, x2, y2, conf, cls) for one image, or a list
      of them for a batch. A padded ``B×N×6`` tensor is not counted: its valid rows are only
      known from the values, and reading them would synchronise the GPU.
    Anything else returns ``None`` (no detection metric, no error).
    """
    # (the exact class first, inline: this runs after every forward, and calls cost there)
    if (
        type(output) is _inputs.tensor_class
        or isinstance(output, tensor_type())
        or _is_tensor(output)
    ):
        return [int(output.shape[0])] if output.dim() == 2 and output.shape[-1] == 6 else None
    if isinstance(output, (list, tuple)) and output:
        counts: list[int] = []
        for item in output:
            count = _count_one(item)
            if count is None:
                return None
            counts.append(count)
        return counts
    if isinstance(output, dict):
        count = _count_one(output)
        return None if count is None else [count]
    return None


def _count_one(item: Any) -> int | None:
    if isinstance(item, dict):
        boxes = item.get("boxes")
        return _rows(boxes) if _is_tensor(boxes) else None
    boxes = getattr(item, "boxes", None)
    if boxes is not None:
        try:
            return len(boxes)
        except TypeError:
            return None
    if _is_tensor(item) and item.dim() == 2 and item.shape[-1] == 6:
        return int(item.shape[0])
    return None


def _rows(tensor: Any) -> int:
    return int(tensor.shape[0]) if tensor.dim() > 0 else 0


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dim")
