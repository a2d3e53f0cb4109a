from __future__ import annotations

from collections.abc import Iterator

import pytest

import visiontel.torch as vt
from visiontel.torch import _model, _safety

from torch_support import Telemetry, make_telemetry


@pytest.fixture(autouse=True)
def _fresh_log_limits() -> None:
    """Forget which warnings and errors were already logged, before every test.

    ``warn_once`` and ``report_internal_error`` say a thing once per process (then at most
    once a minute): without this, a test that expects a warning passes or fails depending
    on whether an earlier test already triggered the same one. These two dictionaries are
    the package's only log-once state; ``private_hooks_usable``'s cache is a decision about
    the installed torch, not a rate limit, and stays.
    """
    with _safety._lock:
        _safety._last_logged.clear()
        _safety._suppressed.clear()


@pytest.fixture(autouse=True)
def _instrumentor_left_off() -> Iterator[None]:
    """A test that fails before its ``uninstrument()`` must not leave the process-wide
    ``TorchInstrumentor`` (a singleton) on: every later ``instrument()`` would do nothing."""
    yield
    instrumentor = vt.TorchInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    yield make_telemetry()
    for model in _model.all_instrumented():
        vt.uninstrument_model(model)
