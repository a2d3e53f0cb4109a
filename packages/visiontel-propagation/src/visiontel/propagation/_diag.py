"""Limits, rejection counting and rate-limited logging shared by every carrier.

Bad input from the wire must never raise into the pipeline: every extract path
reports what it refused through :func:`reject` (a debug log line, a process-local
tally and the ``visiontel.propagation.rejected`` counter) and carries on with
whatever was valid. Bugs of ours go to :func:`internal_error`, the package's one
reporter of the shared support layer (``visiontel._support.errors``); the limits are
read with its environment parser (``visiontel._support.env``): a malformed or
out-of-range variable is logged once and its default used.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace

from opentelemetry import metrics

from visiontel._support.env import check_int, env_int
from visiontel._support.errors import reporter

_logger = logging.getLogger("visiontel.propagation")
_errors = reporter("propagation")
_MINIMUM = {"max_value_bytes": 64, "max_entries": 1, "max_stream_id": 1, "max_links": 1}


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
            max_value_bytes=env_int("VISIONTEL_PROPAGATION_MAX_VALUE_BYTES", 8192, minimum=64),
            max_entries=env_int("VISIONTEL_PROPAGATION_MAX_ENTRIES", 256, minimum=1),
            max_stream_id=env_int("VISIONTEL_PROPAGATION_MAX_STREAM_ID", 128, minimum=1),
            max_links=env_int("OTEL_SPAN_LINK_COUNT_LIMIT", 128, minimum=1),
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
    """Override limits for this process; arguments left out keep their current value.

    Raises ``TypeError`` / ``ValueError`` for a value that is not an integer or is below
    its minimum (64 for ``max_value_bytes``, 1 for the others).
    """
    global _limits
    changes = {
        key: check_int(key, value, minimum=_MINIMUM[key])
        for key, value in {
            "max_value_bytes": max_value_bytes,
            "max_entries": max_entries,
            "max_stream_id": max_stream_id,
            "max_links": max_links,
        }.items()
        if value is not None
    }
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


def internal_error(where: str) -> None:
    """Report a bug of ours (the exception being handled) and carry on: logged with its
    traceback the first time per call site and exception type, then counted, with at most
    one summary line a minute (``visiontel._support.errors``)."""
    _errors.report(where)


def internal_errors() -> dict[str, int]:
    """Internal errors reported so far in this process, by call site (tests, diagnostics)."""
    return _errors.counts()
