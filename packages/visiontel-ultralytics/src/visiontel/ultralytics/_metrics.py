"""What the model saw: detections per class (bounded labels) and a confidence histogram.

Class ids and confidences are tensor *values*, so reading them on a CUDA device would wait
for the GPU, and recording them is a few dozen SDK calls per image: both happen on one
daemon thread (``MetricsWorker``), never on the inference thread. Only counts and
confidences leave the process: never boxes, masks or pixels.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import metrics
from opentelemetry.context import Context

from visiontel.torch._inflight import InFlight
from visiontel.torch._points import record_unsampled
from visiontel.torch._safety import report_internal_error
from visiontel.ultralytics.version import SCHEMA_URL, __version__

OTHER = "other"
_CONFIDENCE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 20))
_MAX_PENDING_BATCHES = 256
_GATHER_S = 0.25  # how long the worker lets jobs gather once one arrived
_GATHER_BATCHES = 16  # ... unless this many wait
_logger = logging.getLogger("visiontel.ultralytics")


class PredictMetrics:
    """The instruments of one meter provider."""

    def __init__(self, meter_provider: metrics.MeterProvider | None) -> None:
        meter = metrics.get_meter(
            "visiontel.ultralytics", __version__, meter_provider, schema_url=SCHEMA_URL
        )
        self.class_detections = meter.create_counter(
            "visiontel.inference.class.detections",
            "{detection}",
            "Detections (top-1 class for classifiers) by class: the tracked classes by name, "
            "every other class as 'other'.",
        )
        try:
            self.confidence = meter.create_histogram(
                "visiontel.inference.confidence",
                "1",
                "Confidence of detections (top-1 probability for classifiers), by class.",
                explicit_bucket_boundaries_advisory=_CONFIDENCE_BUCKETS,
            )
        except TypeError:  # opentelemetry-api older than 1.23 has no bucket advisory
            self.confidence = meter.create_histogram(
                "visiontel.inference.confidence", "1", "Confidence of detections, by class."
            )
        self._confidence_memos: dict[str, dict[str, Any]] = {}  # per label: for the fold

    def record_confidences(
        self, label: str, values: list[float], attributes: dict[str, Any]
    ) -> None:
        """One image's confidences of one label, in one step where the SDK allows (worker
        thread only: no span in context, so no exemplar, as a plain record there)."""
        memo = self._confidence_memos.setdefault(label, {})
        record_unsampled(self.confidence, values, attributes, memo)


def class_labels(
    names: Mapping[int, str] | Sequence[str], top: int, chosen: Sequence[str]
) -> list[str]:
    """The metric label of every class id: its name if tracked, else ``other``.

    Tracked: the names in ``chosen`` when given, else the ``top`` lowest class ids (for
    COCO-trained models the everyday classes: person, bicycle, car...).
    """
    table = dict(enumerate(names)) if isinstance(names, Sequence) else dict(names)
    if not table:
        return []
    size = max(int(k) for k in table) + 1
    labels = [OTHER] * size
    wanted = set(chosen)
    for index in sorted(int(k) for k in table)[: None if chosen else top]:
        name = str(table[index])
        if not chosen or name in wanted:
            labels[index] = name
    if chosen:
        for index, name in table.items():
            if str(name) in wanted:
                labels[int(index)] = str(name)
    return labels


class MetricsWorker:
    """Records each batch's per-image metrics on a thread of its own, a few batches at a time.

    A histogram record or counter add costs the SDK 5-20 µs (attribute checks, hashing,
    aggregation, exemplar reservoir); an image with 20 detections needs about 20 of them.
    The inference thread only queues one job per batch. The worker also reads the class ids
    and confidences (``tolist()``), which on a GPU waits for the device: that wait falls
    here, never on the inference thread. When ``_MAX_PENDING_BATCHES`` jobs wait, further
    batches' metrics are dropped and counted.

    The worker runs the jobs that gathered over ``_GATHER_S`` (or as soon as
    ``_GATHER_BATCHES`` wait, or on ``flush``) back to back. Each wake-up finds the SDK's
    code and data evicted by the forwards in between, and pays for that once per gathering
    rather than once per frame; while the worker runs it holds the GIL the inference thread
    waits for (docs/benchmarks.md, issue 16). The metrics reach a reader at most
    ``_GATHER_S`` later, far inside any export interval.

    A job that has run is not released on the worker: it holds the batch's result tensors,
    allocated by the inference thread, and freeing them there took about a tenth of the
    worker's CPU time in a YOLOv8n loop (docs/benchmarks.md). The thread that submits the
    next job, or a ``flush``, releases it, where the uninstrumented loop would have freed
    them; so a loop that stops holds at most its waiting batches' results until then.
    """

    def __init__(self) -> None:
        self._waiting: collections.deque[Callable[[], None]] = collections.deque()
        self._finished: collections.deque[Callable[[], None]] = collections.deque()
        self._arrived = threading.Event()  # a job waits: start a gathering
        self._run_now = threading.Event()  # enough gathered, or a flush
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()  # starting the thread
        self._pending = InFlight()
        self.dropped = 0
        atexit.register(self.flush, 2.0)

    def submit(self, job: Callable[[], None]) -> None:
        self._release_finished()
        self._start()
        waiting = self._waiting
        if len(waiting) >= _MAX_PENDING_BATCHES:
            self.dropped += 1
            return
        self._pending.add()
        waiting.append(job)
        if len(waiting) >= _GATHER_BATCHES:
            self._run_now.set()
        # After the append: a worker that clears the flag after this reads it drains this
        # job in the same round. Not "first job only": two threads appending at once could
        # each see the other's job and neither wake the worker.
        if not self._arrived.is_set():
            self._arrived.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued job has run; False if ``timeout`` passed first."""
        if not self._pending.idle():
            self._run_now.set()
            self._arrived.set()
        done = self._pending.wait(timeout)
        self._release_finished()
        return done

    def thread_id(self) -> int:
        """The worker thread's id (started if need be), for per-thread CPU clocks."""
        self._start()
        assert self._thread is not None and self._thread.ident is not None
        return self._thread.ident

    def _release_finished(self) -> None:
        finished = self._finished
        while finished:  # popleft is atomic: the worker may append meanwhile
            finished.popleft()

    def _start(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's thread does not exist here
                self._pid, self._thread = os.getpid(), None
                self._pending.reset()
                self._waiting = collections.deque()
                self._finished = collections.deque()
                self._arrived, self._run_now = threading.Event(), threading.Event()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="visiontel-ultralytics-metrics", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        arrived, run_now, waiting = self._arrived, self._run_now, self._waiting
        while True:
            arrived.wait()
            arrived.clear()
            run_now.wait(_GATHER_S)
            run_now.clear()
            while waiting:  # popleft is atomic: submit() may append meanwhile
                job = waiting.popleft()
                try:
                    job()
                except Exception as exc:
                    report_internal_error("ultralytics metrics", exc)
                finally:
                    self._finished.append(job)  # released by the submitting thread
                    del job  # not held while waiting for the next one
                    self._pending.done()


_worker = MetricsWorker()


def worker() -> MetricsWorker:
    return _worker


def values(tensor: Any) -> list[float]:
    """A small tensor's values as a list (waits for the device on a GPU: worker only)."""
    result = tensor.tolist() if hasattr(tensor, "tolist") else list(tensor)
    return result if isinstance(result, list) else [result]


def spread_positions(count: int, limit: int) -> range | list[int]:
    """At most ``limit`` positions out of ``count``, evenly spaced (NMS output is sorted by
    confidence, so the first ``limit`` would keep only the most confident)."""
    if count <= limit:
        return range(count)
    if limit <= 0:
        return []
    step = count / limit
    return [int(i * step) for i in range(limit)]


def record_classes(
    instruments: PredictMetrics,
    *,
    labels: Sequence[str],
    attributes: Mapping[str, dict[str, Any]],
    classes: list[float],
    confidences: list[float],
    max_confidences: int,
    context: Context | None,
) -> None:
    """Add one image's detections to the class counter and confidence histogram."""
    counts: dict[str, int] = {}
    last = len(labels) - 1
    by_label: list[str] = []
    for value in classes:
        index = int(value)
        label = labels[index] if 0 <= index <= last else OTHER
        counts[label] = counts.get(label, 0) + 1
        by_label.append(label)
    for label, count in counts.items():
        instruments.class_detections.add(count, attributes[label], context=context)
    if len(confidences) != len(by_label):
        return
    # No exemplar context here: a histogram record with one costs about twice as much, and
    # the class counter's exemplars already lead to this image's trace. Grouped by label
    # (each label is its own attribute set), each group reaches the SDK in one step.
    grouped: dict[str, list[float]] = {}
    for position in spread_positions(len(confidences), max_confidences):
        grouped.setdefault(by_label[position], []).append(confidences[position])
    for label, values in grouped.items():
        instruments.record_confidences(label, values, attributes[label])
