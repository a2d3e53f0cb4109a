"""Limits, rejection counting and rate-limited logging shared by every carrier.

Bad input from the wire must never raise into the pipeline: every extract path
reports what it refused through :func:`reject` (a debug log line, a process-local
tally and the ``visiontel.propagation.rejected`` counter) and carries on with
whatever was valid.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace

from opentelemetry import metrics

_logger = logging.getLogger("visiontel.propagation")


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        _logger.warning("%s=%r is not an integer; using %d", name, raw, default)
        return default
    if value < minimum:
        _logger.warning("%s=%d is below %d; using %d", name, value, minimum, default)
        return default
    return value


@dataclass(frozen=True)
class Limits:
    """Bounds applied to everything read from a carrier (see the README table)."""

    max_value_bytes: int = 8192
    """Longest header / metadata value looked at; longer ones are refused whole."""
    max_entries: int = 256
    """Entries of a gRPC metadata or message-queue header list scanned for our keys."""
    max_stream_id: int = 128
    """Longest camera / stream id, in characters."""
    max_links: int = 128
    """Links put on one span (the SDK's OTEL_SPAN_LINK_COUNT_LIMIT)."""

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_value_bytes=_env_int("VISIONTEL_PROPAGATION_MAX_VALUE_BYTES", 8192, 64),
            max_entries=_env_int("VISIONTEL_PROPAGATION_MAX_ENTRIES", 256),
            max_stream_id=_env_int("VISIONTEL_PROPAGATION_MAX_STREAM_ID", 128),
            max_links=_env_int("OTEL_SPAN_LINK_COUNT_LIMIT", 128),
        )


_limits = Limits.from_env()


def limits() -> Limits:
    """The limits in force (environment defaults, overridden by :func:`configure`)."""
    return _limits


def configure(
    *,
    max_value_bytes: int | None = None,
    max_entries: int | None = None,
    max_stream_id: int | None = None,
    max_links: int | None = None,
) -> Limits:
    """Override limits for this process; arguments left out keep their current value."""
    global _limits
    changes = {
        key: value
        for key, value in {
            "max_value_bytes": max_value_bytes,
            "max_entries": max_entries,
            "max_stream_id": max_stream_id,
            "max_links": max_links,
        }.items()
        if value is not None
    }
    for key, value in changes.items():
        if value < 1:
            raise ValueError(f"{key} must be at least 1, got {value}")
    _limits = replace(_limits, **changes)
    return _limits


# --- rejections -------------------------------------------------------------------

_lock = threading.Lock()
_tally: Counter[tuple[str, str]] = Counter()
_total = 0
_last_log: dict[tuple[str, str], float] = {}
_LOG_EVERY_S = 10.0
_counter: metrics.Counter | None = None


def _get_counter() -> metrics.Counter:
    # Created lazily so that a MeterProvider installed after import is still used
    # (the API's proxy meter forwards to it either way).
    global _counter
    if _counter is None:
        _counter = metrics.get_meter("visiontel.propagation").create_counter(
            "visiontel.propagation.rejected",
            unit="{value}",
            description="Carrier values ignored because they were malformed, oversized or hostile",
        )
    return _counter


def reject(carrier: str, reason: str, detail: object = "") -> None:
    """Record one refused value: tally, metric and a rate-limited debug line."""
    key = (carrier, reason)
    now = time.monotonic()
    global _total
    with _lock:
        _tally[key] += 1
        _total += 1
        last = _last_log.get(key)
        should_log = last is None or now - last >= _LOG_EVERY_S
        if should_log:
            _last_log[key] = now
    if should_log:
        # repr() and truncation: the value came from the wire.
        _logger.debug("ignored %s value (%s): %.80r", carrier, reason, detail)
    try:
        _get_counter().add(1, {"visiontel.carrier": carrier, "visiontel.reason": reason})
    except Exception:  # a broken metrics SDK must not break extraction
        internal_error("rejection counter")


def rejections() -> int:
    """Values refused so far in this process, all reasons together."""
    return _total


def rejected_counts() -> dict[tuple[str, str], int]:
    """Values refused so far in this process, by ``(carrier, reason)``."""
    with _lock:
        return dict(_tally)


_errors_logged: set[str] = set()


def internal_error(where: str) -> None:
    """Log a bug of ours once per call site, with its traceback, and carry on."""
    if where in _errors_logged:
        return
    _errors_logged.add(where)
    _logger.exception("visiontel.propagation internal error in %s (ignored)", where)
