"""Settings, the process's loss tally, its metric and rate-limited logging.

Settings follow the workspace rule: a keyword argument, whose default comes from a
``VISIONTEL_SPOOL_*`` variable; a malformed variable is logged once and replaced by the
default, a malformed argument raises.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from opentelemetry import metrics

from visiontel._support.env import check_float, check_int, env_float, env_int, env_str
from visiontel._support.errors import reporter

errors = reporter("spool")
logger = errors.logger

DEFAULT_MAX_BYTES = 256 * 2**20
MIN_MAX_BYTES = 64 * 2**10
DEFAULT_MAX_BACKOFF_S = 5.0
MIN_MAX_BACKOFF_S = 0.05
LOG_EVERY_S = 60.0
REASONS = ("full", "corrupt", "rejected")

_lock = threading.Lock()
_tally: Counter[tuple[str, str]] = Counter()  # (signal, reason) -> items lost
_last_log: dict[str, float] = {}
_since_log: Counter[str] = Counter()
_metric_registered = False


def default_directory() -> Path:
    """``$XDG_STATE_HOME/visiontel/spool/<service>`` (``~/.local/state`` without it): one
    directory per application, since one process at a time may own a spool."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    service = env_str("OTEL_SERVICE_NAME", "default")
    return Path(state) / "visiontel" / "spool" / re.sub(r"[^A-Za-z0-9._-]", "_", service)[:64]


def directory_setting(value: str | os.PathLike[str] | None) -> Path:
    if value is not None:
        return Path(value)
    raw = env_str("VISIONTEL_SPOOL_DIR", "")
    return Path(raw) if raw else default_directory()


def max_bytes_setting(value: int | None) -> int:
    if value is not None:
        return check_int("max_bytes", value, minimum=MIN_MAX_BYTES)
    return env_int("VISIONTEL_SPOOL_MAX_BYTES", DEFAULT_MAX_BYTES, minimum=MIN_MAX_BYTES)


def max_backoff_setting(value: float | None) -> float:
    if value is not None:
        return check_float("max_backoff", value, minimum=MIN_MAX_BACKOFF_S)
    return env_float(
        "VISIONTEL_SPOOL_MAX_BACKOFF", DEFAULT_MAX_BACKOFF_S, minimum=MIN_MAX_BACKOFF_S
    )


# --- logging -------------------------------------------------------------------------------
def log_once(key: str, message: str, *args: object, level: int = logging.WARNING) -> None:
    """Log ``message`` the first time ``key`` is seen in this process."""
    errors.warn_once(key, message, *args, level=level)


# --- losses --------------------------------------------------------------------------------
def count_loss(signal: str, reason: str, items: int, batches: int, directory: Path) -> None:
    """Count items lost and log it: at once the first time, then at most once a minute per
    signal and reason, with the number lost since the last line."""
    if items <= 0 and batches <= 0:
        return
    key = f"{signal}/{reason}"
    now = time.monotonic()
    with _lock:
        _tally[(signal, reason)] += items
        _since_log[key] += items
        _since_log[key + "/batches"] += batches
        last = _last_log.get(key)
        if last is not None and now - last < LOG_EVERY_S:
            return
        _last_log[key] = now
        since, _since_log[key] = _since_log[key], 0
        since_batches, _since_log[key + "/batches"] = _since_log[key + "/batches"], 0
    why = {
        "full": "the spool is full (oldest batches dropped first)",
        "corrupt": "a spooled batch failed its length/checksum check",
        "rejected": "the endpoint refused the batch for good (a 4xx answer)",
    }[reason]
    logger.warning(
        "visiontel.spool: %d %s item(s) in %d batch(es) lost since the last report: %s; spool %s",
        since,
        signal,
        since_batches,
        why,
        directory,
    )


def dropped_counts() -> dict[tuple[str, str], int]:
    """Items (spans, metric points, log records) this process lost, by (signal, reason)."""
    with _lock:
        return dict(_tally)


def register_metric() -> None:
    """The ``visiontel.spool.dropped`` counter (observed, so losing costs no metric call)."""
    global _metric_registered
    with _lock:
        if _metric_registered:
            return
        _metric_registered = True
    meter = metrics.get_meter("visiontel.spool")
    meter.create_observable_counter(
        "visiontel.spool.dropped",
        callbacks=[_observe],
        unit="{item}",
        description="Telemetry items the offline spool lost: spool full, corrupt file, refused",
    )


def _observe(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    for (signal, reason), items in dropped_counts().items():
        yield metrics.Observation(items, {"visiontel.signal": signal, "visiontel.reason": reason})
