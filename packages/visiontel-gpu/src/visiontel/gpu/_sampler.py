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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._log = RateLimitedLog()

    def current(self) -> Collected | None:
        latest = self._latest
        if latest is None or time.monotonic() - latest.snapshot.taken_at > self.stale_after:
            return None
        return latest

    def sweep_once(self) -> None:
        """One sweep; never raises."""
        with self._lock:  # a manual sweep and the thread's never interleave
            try:
                snapshot = self.backend.sweep()
            except Exception:
                self.errors[("sweep_failed", None)] += 1
                self._log.exception("sweep", "GPU collection sweep failed; will retry")
                return
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

    def start(self) -> None:
        self.sweep_once()  # the first export already has data
        self._thread = threading.Thread(target=self._run, name="visiontel-gpu-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            self.sweep_once()
            # Fixed cadence; after a long stall, skip missed ticks instead of bursting.
            next_at = max(next_at + self.interval, time.monotonic())

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._latest = None
