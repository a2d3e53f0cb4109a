"""One rate-limited reporter for visiontel's own failures.

Instrumentation never breaks what it observes: an exception raised by visiontel code inside
a hook, a callback or an exporter is handed to :meth:`ErrorReporter.report` and swallowed.
The first one of a kind (call site and exception type) is logged with its traceback (at
ERROR unless the reporter is given another ``level``); the
repeats are counted and summarised in at most one line per interval and call site, so a bug
on a 1000-frames-a-second path cannot flood the logs.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time

__all__ = ["ErrorReporter", "reporter"]


class ErrorReporter:
    """Logs internal errors of one package: once with a traceback, then counted."""

    def __init__(
        self, logger: logging.Logger | str, *, interval_s: float = 60.0, level: int = logging.ERROR
    ) -> None:
        if isinstance(logger, str):
            logger = logging.getLogger(logger)
        if not isinstance(logger, logging.Logger):
            raise TypeError(f"logger must be a logging.Logger or a logger name; got {logger!r}")
        if isinstance(interval_s, bool) or not isinstance(interval_s, int | float):
            raise TypeError(f"interval_s must be a number of seconds; got {interval_s!r}")
        if not interval_s >= 0:
            raise ValueError(f"interval_s must be >= 0 seconds; got {interval_s!r}")
        self.logger = logger
        self.interval_s = float(interval_s)
        # ERROR: an exception of ours is a bug, and the handlers that tests and the fuzzers
        # install to catch swallowed bugs listen at ERROR (every reporter this one replaced
        # logged there too).
        self.level = level
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._seen: set[tuple[str, str]] = set()
        self._pending: dict[str, int] = {}
        self._last_line: dict[str, float] = {}
        self._said: set[str] = set()

    def report(self, where: str, exc: BaseException | None = None, *, message: str = "") -> None:
        """Record one internal error at ``where``; log it if it is new or the interval is up.

        ``exc`` defaults to the exception being handled, if any. Never raises, even if
        logging itself fails: the caller is in the middle of someone else's work.
        """
        # A broken handler or formatter must not reach the application.
        with contextlib.suppress(Exception):
            self._report(where, exc, message)

    def _report(self, where: str, exc: BaseException | None, message: str) -> None:
        if exc is None:
            exc = sys.exc_info()[1]
        kind = type(exc).__qualname__ if exc is not None else ""
        now = time.monotonic()
        summary = 0
        with self._lock:
            self._counts[where] = self._counts.get(where, 0) + 1
            first = (where, kind) not in self._seen
            if first:
                self._seen.add((where, kind))
                self._last_line.setdefault(where, now)
            else:
                self._pending[where] = self._pending.get(where, 0) + 1
                if now - self._last_line.get(where, now) >= self.interval_s:
                    summary = self._pending.pop(where)
                    self._last_line[where] = now
        detail = f": {message}" if message else ""
        if first:
            self.logger.log(
                self.level,
                "%s: internal error in %s%s (ignored: the application goes on)",
                self.logger.name,
                where,
                detail,
                exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
            )
        elif summary:
            latest = f" (latest: {kind}: {str(exc)[:200]})" if exc is not None else ""
            self.logger.log(
                self.level,
                "%s: %d more internal error(s) since the last report%s",
                where,
                summary,
                latest,
            )

    def warn_once(
        self, key: str, message: str, *args: object, level: int = logging.WARNING
    ) -> None:
        """A line worth saying once per process and ``key`` (configuration, capacity), at
        ``level`` (a WARNING unless told); never raises."""
        with contextlib.suppress(Exception):
            with self._lock:
                if key in self._said:
                    return
                self._said.add(key)
            self.logger.log(level, message, *args)

    def counts(self) -> dict[str, int]:
        """Internal errors reported so far, by call site."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        """Forget everything reported and said (tests)."""
        with self._lock:
            self._counts.clear()
            self._seen.clear()
            self._pending.clear()
            self._last_line.clear()
            self._said.clear()


_registry_lock = threading.Lock()
_registry: dict[str, ErrorReporter] = {}


def reporter(package: str) -> ErrorReporter:
    """The one reporter of ``package`` (``"torch"``, ``"spool"``...), logging on the
    ``visiontel.<package>`` logger."""
    if not isinstance(package, str) or not package or package.startswith("visiontel"):
        raise ValueError(
            f"package must be a distribution's short name such as 'torch'; got {package!r}"
        )
    with _registry_lock:
        found = _registry.get(package)
        if found is None:
            found = _registry[package] = ErrorReporter(f"visiontel.{package}")
        return found
