"""Keep our own failures away from the model.

Every hook body catches its own exceptions and reports them here: an exception raised by
visiontel is logged once with its traceback (then at most once a minute per call site, with
a count of the repeats) and swallowed, so the forward pass goes on exactly as it would
without instrumentation. The reporting itself is the workspace's one reporter,
``visiontel._support.errors``, on the ``visiontel.torch`` logger (visiontel-ultralytics
reports through these functions too).
"""

from __future__ import annotations

from visiontel._support.errors import reporter

errors = reporter("torch")


def internal_error_count() -> int:
    """How many exceptions visiontel has swallowed in this process (since the last reset)."""
    return sum(errors.counts().values())


def report_internal_error(site: str, exc: BaseException) -> None:
    """Log ``exc`` raised at ``site`` once, then rate-limited; never raises."""
    errors.report(site, exc, message="the model is unaffected")


def warn_once(key: str, message: str, *args: object) -> None:
    """A warning that is worth saying once per process (configuration, capacity)."""
    errors.warn_once(key, message, *args)
