"""Keep our own failures away from the model.

Every hook body catches its own exceptions and reports them here: an exception raised by
visiontel is logged once (then at most once a minute per call site, with a count of what
was suppressed) and swallowed, so the forward pass goes on exactly as it would without
instrumentation.
"""

from __future__ import annotations

import logging
import threading
import time

_logger = logging.getLogger("visiontel.torch")
_REPEAT_INTERVAL_S = 60.0

_lock = threading.Lock()
_last_logged: dict[str, float] = {}
_suppressed: dict[str, int] = {}
_error_count = 0


def internal_error_count() -> int:
    """How many exceptions visiontel has swallowed in this process."""
    return _error_count


def report_internal_error(site: str, exc: BaseException) -> None:
    """Log ``exc`` raised at ``site`` once, then rate-limited; never raises."""
    global _error_count
    now = time.monotonic()
    with _lock:
        _error_count += 1
        last = _last_logged.get(site)
        if last is not None and now - last < _REPEAT_INTERVAL_S:
            _suppressed[site] = _suppressed.get(site, 0) + 1
            return
        _last_logged[site] = now
        repeated = _suppressed.pop(site, 0)
    suffix = f" ({repeated} similar errors suppressed since the last report)" if repeated else ""
    _logger.error(
        "visiontel.torch: internal error in %s; the model is unaffected%s",
        site,
        suffix,
        exc_info=(type(exc), exc, exc.__traceback__),
    )


def warn_once(key: str, message: str, *args: object) -> None:
    """A warning that is worth saying once per process (configuration, capacity)."""
    with _lock:
        if key in _last_logged:
            return
        _last_logged[key] = time.monotonic()
    _logger.warning(message, *args)
