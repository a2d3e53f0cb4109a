"""A frame queue that hands frames out in batches, with its depth and wait time as metrics.

Producers (gRPC handlers, decoder threads) :meth:`~FrameBatcher.put` each frame with the
context it arrived with; the inference loop takes :meth:`~FrameBatcher.next_batch` and
opens :func:`~visiontel.propagation.batch_span` on the contexts it gets back. Metrics,
with the attribute ``visiontel.batcher.name``:

* ``visiontel.batcher.queue.depth`` (observable UpDownCounter, ``{frame}``): frames waiting
  at collection time. Observed rather than added to on every put and take: it costs the
  frames nothing, and depths of several batchers still add up. Batchers are held weakly: one
  that is garbage collected stops reporting, so keep it for the pipeline's life (or flush
  the meter provider before letting it go, if its last depth matters).
* ``visiontel.batcher.wait.duration`` (histogram, seconds): from ``put`` to the moment the
  frame's batch is handed out, so the time spent filling a batch is included.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from typing import Generic, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics
from opentelemetry.context import Context

from visiontel._support.env import check_float, check_int
from visiontel.propagation._diag import internal_error
from visiontel.propagation._streams import Reading, _Observed
from visiontel.propagation.version import __version__

T = TypeVar("T")
DEPTH_METRIC = "visiontel.batcher.queue.depth"
WAIT_METRIC = "visiontel.batcher.wait.duration"
ATTR_BATCHER = "visiontel.batcher.name"
# From a frame taken at once (tens of microseconds) to a backlog of seconds.
_WAIT_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class FrameBatcher(Generic[T]):
    """Thread-safe queue of ``(context, item)`` handed out in batches.

    ``name`` tells batchers apart in the metrics. ``capacity`` > 0 bounds the queue:
    ``put`` then waits for room, which holds the producer back (backpressure); 0 means
    unbounded. ``meter_provider`` defaults to the global one.
    """

    def __init__(
        self,
        name: str = "frames",
        *,
        capacity: int = 0,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string naming the batcher, got {name!r}")
        self.name = name
        self.capacity = check_int("capacity", capacity, minimum=0)
        self._items: collections.deque[tuple[Context, T, float]] = collections.deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False
        self._attributes = {ATTR_BATCHER: name}
        meter = metrics.get_meter("visiontel.propagation", __version__, meter_provider)
        _DEPTH.add(self, meter_provider)
        self._wait = meter.create_histogram(
            WAIT_METRIC,
            unit="s",
            description="Time a frame waited in a batcher, from put to its batch handed out",
            explicit_bucket_boundaries_advisory=_WAIT_BUCKETS,
        )

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def put(self, context: Context | None, item: T, *, timeout: float | None = None) -> None:
        """Queue ``item`` with the ``context`` it arrived with (None: the current one).

        With a ``capacity``, waits for room (at most ``timeout`` seconds, then raises
        :class:`queue.Full`). Raises ``RuntimeError`` after :meth:`close`.
        """
        if context is None:
            context = otel_context.get_current()
        with self._not_full:
            if self.capacity:
                deadline = None if timeout is None else time.monotonic() + timeout
                while len(self._items) >= self.capacity and not self._closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise queue.Full(f"batcher {self.name!r} stayed full for {timeout}s")
                    self._not_full.wait(left)
            if self._closed:
                raise RuntimeError(f"batcher {self.name!r} is closed: put nothing after close()")
            self._items.append((context, item, time.monotonic()))
            self._not_empty.notify()

    def next_batch(
        self, max_size: int, max_wait_s: float, *, timeout: float | None = None
    ) -> list[tuple[Context, T]]:
        """Up to ``max_size`` frames, oldest first, as ``(context, item)`` pairs.

        Waits for the first frame (at most ``timeout`` seconds; None: as long as it takes),
        then at most ``max_wait_s`` more for the batch to fill. Returns an empty list when
        no frame came in ``timeout``, or when the batcher is closed and empty.
        """
        max_size = check_int("max_size", max_size, minimum=1)
        max_wait_s = check_float("max_wait_s", max_wait_s, minimum=0.0)
        taken: list[tuple[Context, T, float]] = []
        with self._not_empty:
            if not self._not_empty.wait_for(lambda: self._items or self._closed, timeout):
                return []
            fill_until = time.monotonic() + max_wait_s
            while True:
                popped = min(len(self._items), max_size - len(taken))
                if popped:
                    taken.extend(self._items.popleft() for _ in range(popped))
                    self._not_full.notify(popped)  # room for producers held by capacity
                if len(taken) >= max_size or self._closed:
                    break
                left = fill_until - time.monotonic()
                if left <= 0:
                    break
                self._not_empty.wait(left)
        if not taken:
            return []
        now = time.monotonic()
        try:
            record, attributes = self._wait.record, self._attributes
            for _, _, put_at in taken:
                record(now - put_at, attributes)
        except Exception:  # a broken metrics SDK must not lose the batch
            internal_error("FrameBatcher wait time")
        return [(context, item) for context, item, _ in taken]

    def close(self) -> None:
        """No more frames: wake every waiter; ``next_batch`` drains what is left, then
        returns empty lists, and ``put`` raises."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    def _reading(self) -> list[Reading]:
        return [(self._attributes, len(self))]


_DEPTH = _Observed(
    DEPTH_METRIC,
    "updown",
    "{frame}",
    "Frames waiting in a batcher's queue",
    lambda batcher: batcher._reading(),
)
