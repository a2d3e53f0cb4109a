"""A count of queued work that a caller can wait to reach zero (``flush``).

Shared by every background worker in visiontel (visiontel-torch's resolver,
visiontel-ultralytics' metrics worker): each counts what it accepted and what it finished,
and ``flush(timeout)`` waits on that count.
"""

from __future__ import annotations

import threading
import time


class InFlight:
    def __init__(self) -> None:
        self._idle = threading.Condition(threading.Lock())
        self._count = 0

    def add(self) -> None:
        with self._idle:
            self._count += 1

    def done(self) -> None:
        with self._idle:
            self._count -= 1
            if not self._count:
                self._idle.notify_all()

    def idle(self) -> bool:
        """Nothing counted right now (read without the lock: a snapshot)."""
        return not self._count

    def reset(self) -> None:
        """Forget everything counted (after ``fork``: the parent's work is not ours)."""
        with self._idle:
            self._count = 0

    def wait(self, timeout: float) -> bool:
        """Wait until the count is zero; False if ``timeout`` seconds passed first."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True
