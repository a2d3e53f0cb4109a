"""Inference metrics and detection counting.

Counting detections reads only tensor *shapes*: ``len(boxes)`` or ``tensor.shape[0]`` never
copies data to the host, so it never waits for the GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import metrics
from opentelemetry.context import Context

from visiontel.torch import _inputs
from visiontel.torch._inputs import tensor_type
from visiontel.torch._points import SampledPoints, UnsampledPoints
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
