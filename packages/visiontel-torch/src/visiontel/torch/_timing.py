"""GPU timing without synchronising the caller's stream.

Hooks record pooled CUDA events on the current stream (a non-blocking enqueue). The
resolver thread later asks each event ``query()`` and only reads ``elapsed_time`` once
every event of a forward has completed; nothing here ever waits on the caller's thread.

The two protocols below are the whole surface the resolver needs, so tests drive the same
resolver with a scripted event source (there is no GPU in CI).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

_cuda_sources: dict[int, EventSource] = {}
_cuda_sources_lock = threading.Lock()


class GpuEvent(Protocol):
    """The part of ``torch.cuda.Event`` the tracer uses."""

    def record(self) -> None: ...

    def query(self) -> bool: ...

    def elapsed_time(self, end_event: Any) -> float:
        """Milliseconds from this event to ``end_event`` (both completed)."""
        ...


class EventSource(Protocol):
    """Hands out timing events for one device and takes them back when resolved."""

    def acquire(self) -> GpuEvent | None:
        """A recorded event, or ``None`` if the pool is exhausted (timing is then skipped)."""
        ...

    def release(self, events: list[GpuEvent]) -> None: ...

    def wall_clock_ns(self, event: GpuEvent) -> int | None:
        """Wall-clock time at which ``event`` completed on the device, once calibrated."""
        ...


class CudaEventSource:
    """A bounded pool of ``torch.cuda.Event(enable_timing=True)`` for one device.

    Calibration maps device time onto wall-clock time: on the resolver thread (never the
    caller's) a reference event is recorded on a private idle stream and waited for, and the
    wall clock read right after it completes. Any completed event's wall time is then
    ``reference_wall + reference.elapsed_time(event)``. It is refreshed every
    ``recalibrate_s`` seconds to follow clock drift.
    """

    def __init__(self, device_index: int, capacity: int = 4096, recalibrate_s: float = 10.0):
        import torch

        self._torch = torch
        self._device = torch.device("cuda", device_index)
        self._free: list[Any] = []
        self._created = 0
        self._capacity = capacity
        self._lock = threading.Lock()
        self._recalibrate_s = recalibrate_s
        self._reference: tuple[Any, int, float] | None = None
        self._calibration_stream: Any = None

    def acquire(self) -> GpuEvent | None:
        with self._lock:
            if self._free:
                event = self._free.pop()
            elif self._created < self._capacity:
                self._created += 1
                event = self._torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            else:
                return None
        event.record()  # enqueued on the current stream; returns at once
        return event  # type: ignore[no-any-return]

    def release(self, events: list[GpuEvent]) -> None:
        with self._lock:
            self._free.extend(events)

    def wall_clock_ns(self, event: GpuEvent) -> int | None:
        reference = self._calibrated_reference()
        if reference is None:
            return None
        ref_event, ref_wall_ns, _ = reference
        return ref_wall_ns + int(ref_event.elapsed_time(event) * 1e6)

    def _calibrated_reference(self) -> tuple[Any, int, float] | None:
        # Runs on the resolver thread only: blocking here delays telemetry, never inference.
        now = time.monotonic()
        if self._reference is not None and now - self._reference[2] < self._recalibrate_s:
            return self._reference
        torch = self._torch
        if self._calibration_stream is None:
            self._calibration_stream = torch.cuda.Stream(device=self._device)
        event = torch.cuda.Event(enable_timing=True)
        event.record(self._calibration_stream)
        event.synchronize()
        self._reference = (event, time.time_ns(), now)
        return self._reference


def cuda_event_source(device: Any) -> EventSource | None:
    """The process's event pool for ``device`` (``torch.device`` or ``"cuda:0"``) when it is
    a CUDA device, else ``None``."""
    if device is None:
        return None
    import torch

    if isinstance(device, str):
        device = torch.device(device)
    if getattr(device, "type", None) != "cuda":
        return None

    index = device.index if device.index is not None else torch.cuda.current_device()
    source = _cuda_sources.get(index)
    if source is None:
        with _cuda_sources_lock:
            source = _cuda_sources.setdefault(index, CudaEventSource(index))
    return source
