"""The sampler thread: one backend sweep per interval, the latest result kept for readers.

Observable-instrument callbacks only read `Sampler.current()`, so an export costs no NVML
call and the sweep cadence is independent of the export interval. A sweep that fails or
hangs never reaches the application: failures are counted and logged (rate-limited), and a
snapshot older than `stale_after` is withheld rather than exported as if it were current.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from visiontel.gpu import _model as m
from visiontel.gpu._backend import Backend
from visiontel.gpu._cgroup import ProcessAttributes

_log = logging.getLogger("visiontel.gpu")


class RateLimitedLog:
    """Logs each distinct problem at most once per `period` seconds."""

    def __init__(self, period: float = 300.0) -> None:
        self._period = period
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def exception(self, key: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period:
                return
            self._last[key] = now
        _log.warning(message, exc_info=True)


@dataclass(frozen=True)
class Collected:
    snapshot: m.Snapshot
    process_attributes: dict[int, dict[str, str]] = field(default_factory=dict)


class Sampler:
    def __init__(
        self, backend: Backend, interval: float, *, proc_root: str | None = "/proc"
    ) -> None:
        self.backend = backend
        self.interval = interval
        # Three missed sweeps plus two seconds of slack (NVML calls can take a while on a
        # busy driver) and the data is old: 5 s at the default 1 s interval.
        self.stale_after = 3 * interval + 2.0
        self.errors: Counter[tuple[str, str | None]] = Counter()
        self._latest: Collected | None = None
        self._processes = ProcessAttributes(proc_root) if proc_root else None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # held for a whole sweep: two never interleave
        # Sweep numbers and refresh requests. Only the sampler thread sweeps on request, so
        # any number of refresh() calls while a sweep hangs in NVML add up to one more sweep.
        self._progress = threading.Condition()
        self._started = 0  # number of the latest sweep begun
        self._finished = 0  # number of the latest sweep ended (they end in order)
        self._stored = 0  # number of the latest sweep that stored a snapshot
        self._requested = False
        self._stopping = False
        self._log = RateLimitedLog()

    def current(self) -> Collected | None:
        latest = self._latest
        if latest is None or time.monotonic() - latest.snapshot.taken_at > self.stale_after:
            return None
        return latest

    def sweep_once(self) -> bool:
        """One sweep on the calling thread; never raises. True when it stored a snapshot."""
        with self._lock:  # a manual sweep and the thread's never interleave
            with self._progress:
                self._started += 1
                number = self._started
            stored = self._sweep()
            with self._progress:
                self._finished = number
                if stored:
                    self._stored = number
                self._progress.notify_all()
        return stored

    def _sweep(self) -> bool:
        try:
            snapshot = self.backend.sweep()
        except Exception:
            self.errors[("sweep_failed", None)] += 1
            self._log.exception("sweep", "GPU collection sweep failed; will retry")
            return False
        for error in snapshot.errors:
            self.errors[(error.error_type, error.device)] += 1
        attributes: dict[int, dict[str, str]] = {}
        if self._processes is not None:
            try:
                pids = {p.pid for d in snapshot.devices for p in d.processes}
                self._processes.retain(pids)
                attributes = {pid: self._processes.get(pid) for pid in pids}
            except Exception:
                self._log.exception("cgroup", "reading process cgroups failed")
        self._latest = Collected(snapshot, attributes)
        return True

    def refresh(self, timeout: float) -> bool:
        """Have the sampler thread sweep now; wait at most `timeout` s for that sweep.

        True when a sweep that began after this call stored its snapshot in time. The
        caller never enters NVML: a sweep stuck there goes on in the background, and the
        requested one follows it.
        """
        with self._progress:
            thread = self._thread
            if self._stopping or thread is None or not thread.is_alive():
                return False
            # A sweep already under way may have read the GPUs before this call.
            wanted = self._started + 1
            self._requested = True
            self._progress.notify_all()
            self._progress.wait_for(lambda: self._finished >= wanted or self._stopping, timeout)
            return self._stored >= wanted

    def start(self) -> None:
        self.sweep_once()  # the first export already has data
        self._thread = threading.Thread(target=self._run, name="visiontel-gpu-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic() + self.interval
        while True:
            with self._progress:
                while not (self._stopping or self._requested):
                    remaining = next_at - time.monotonic()
                    if remaining <= 0:
                        break
                    self._progress.wait(remaining)
                if self._stopping:
                    return
                self._requested = False
            self.sweep_once()
            now = time.monotonic()
            if now >= next_at:  # a tick (a requested sweep before one leaves the cadence)
                # Fixed cadence; after a long stall, skip missed ticks instead of bursting.
                next_at = max(next_at + self.interval, now)

    def stop(self, timeout: float = 5.0) -> None:
        with self._progress:
            self._stopping = True  # also wakes refresh() callers: no sweep is coming
            self._progress.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._latest = None
