"""The version half of every gate around an OpenTelemetry internal.

A package that uses a private piece of an OpenTelemetry distribution does so only where the
installed release is one it was tested with. :class:`VersionGate` answers that question
once per process (thread-safe) and, when the answer is no, says so once at INFO, naming the
release, the tested range and what the package does instead. What each package checks
beyond the version (shapes of objects, probe spans) stays in its own ``_otel_private``.
"""

from __future__ import annotations

import logging
import threading
from importlib import metadata

__all__ = ["Release", "VersionGate", "release_of"]

Release = tuple[int, int]


def release_of(distribution: str) -> tuple[str, Release] | None:
    """(version string, (major, minor)) of an installed distribution; None if absent or
    not numbered major.minor."""
    try:
        # Looked up through the module at call time: tests replace metadata.version.
        installed = metadata.version(distribution)
        major, minor = (int(part) for part in installed.split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return None
    return installed, (major, minor)


class VersionGate:
    """Open when ``distribution``'s installed (major, minor) lies inside ``tested``."""

    def __init__(
        self,
        distribution: str,
        tested: tuple[Release, Release],
        *,
        logger: logging.Logger | str,
        instead: str,
    ) -> None:
        low, high = tested
        if not low <= high:
            raise ValueError(f"tested must be (oldest, newest); got {tested!r}")
        self.distribution = distribution
        self.tested = tested
        self._logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self._instead = instead
        self._lock = threading.Lock()
        self._open: bool | None = None

    def is_open(self) -> bool:
        """Whether the installed release was tested (decided once; said once if not)."""
        decided = self._open
        if decided is None:
            with self._lock:
                if self._open is None:
                    self._open = self._decide()
                decided = self._open
        return decided

    def reset(self) -> None:
        """Decide again at the next :meth:`is_open` (tests)."""
        with self._lock:
            self._open = None

    def _decide(self) -> bool:
        found = release_of(self.distribution)
        if found is None:
            return False
        installed, release = found
        low, high = self.tested
        if low <= release <= high:
            return True
        self._logger.info(
            "%s: %s %s is outside the releases it was tested with (%d.%d to %d.%d); %s",
            self._logger.name,
            self.distribution,
            installed,
            *low,
            *high,
            self._instead,
        )
        return False
