from __future__ import annotations

import os
import time
from collections.abc import Iterator
from types import ModuleType
from typing import TypeVar

import pytest
import torch
from cuda_standin import RealCuda, StandInGpu

import visiontel.torch as vt
from visiontel._support import env as support_env
from visiontel.torch import _model, _safety, _timing

from torch_support import Telemetry, make_telemetry

B = TypeVar("B", StandInGpu, RealCuda)


@pytest.fixture(autouse=True)
def _fresh_log_limits() -> None:
    """Forget which warnings and errors were already logged, before every test.

    ``warn_once`` and ``report_internal_error`` say a thing once per process (then at most
    once a minute): without this, a test that expects a warning passes or fails depending
    on whether an earlier test already triggered the same one. The package's reporter and
    the environment parser's said-once set are its only log-once state;
    ``private_hooks_usable``'s cache is a decision about the installed torch, not a rate
    limit, and stays.
    """
    _safety.errors.reset()
    support_env.reset()


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


def _installed(backend: B, monkeypatch: pytest.MonkeyPatch) -> Iterator[B]:
    # The process-wide cache of sources: fresh, so no source outlives the stand-in it used.
    monkeypatch.setattr(_timing, "_cuda_sources", {})
    errors = _safety.internal_error_count()
    backend.install(monkeypatch)
    yield backend
    # Hooks and stages swallow exceptions; a stand-in that refused a call must still fail
    # the test.
    assert backend.log.violations == []
    assert _safety.internal_error_count() == errors, "visiontel swallowed an internal error"


@pytest.fixture(params=["stand-in", "cuda"])
def gpu(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StandInGpu | RealCuda]:
    """The CUDA stand-in (any machine), then a real GPU with recorders (skipped without one)."""
    if request.param == "stand-in":
        yield from _installed(StandInGpu(wall_zero_ns=time.time_ns()), monkeypatch)
        return
    if not torch.cuda.is_available():
        pytest.skip("needs cuda: no CUDA device (torch.cuda.is_available() is False)")
    yield from _installed(RealCuda(), monkeypatch)


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInGpu]:
    """The stand-in alone, for what needs its scripted clocks or its device queue held back."""
    yield from _installed(StandInGpu(wall_zero_ns=time.time_ns()), monkeypatch)


@pytest.fixture
def compiled() -> ModuleType:
    """``visiontel.torch._speedups``: nox builds it (VISIONTEL_REQUIRE_SPEEDUPS=1 there, so a
    missing build fails); elsewhere its tests skip saying how to build it."""
    try:
        from visiontel.torch import _speedups  # type: ignore[attr-defined]
    except ImportError as exc:
        if os.environ.get("VISIONTEL_REQUIRE_SPEEDUPS"):
            raise AssertionError(f"nox builds visiontel-torch's C extension: {exc}") from exc
        pytest.skip(f"needs the compiled extension (pip install -e with a C compiler): {exc}")
    return _speedups  # type: ignore[no-any-return]
