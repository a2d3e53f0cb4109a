"""Fixtures: the simulated NVML built with the system C compiler, loaded by real nvidia-ml-py."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from gpu_test_helpers import Metrics, two_gpus

from visiontel._support import env
from visiontel.gpu import GPUInstrumentor
from visiontel.gpu.testing import NvmlSimulator


@pytest.fixture(autouse=True)
def _fresh_env_warnings() -> None:
    """A malformed variable is logged once per process: each test may expect its warning."""
    env.reset()


@pytest.fixture(scope="session")
def sim_build(tmp_path_factory: pytest.TempPathFactory) -> NvmlSimulator:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.fail("the NVML simulator needs a C compiler (cc or gcc) on PATH")
    return NvmlSimulator.build(tmp_path_factory.mktemp("nvml-sim"))


@pytest.fixture
def sim(sim_build: NvmlSimulator, monkeypatch: pytest.MonkeyPatch) -> NvmlSimulator:
    """The simulator with two healthy GPUs; tests rewrite the script as they need."""
    for key, value in sim_build.env().items():
        monkeypatch.setenv(key, value)
    sim_build.write(two_gpus())
    return sim_build


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    yield m
    m.provider.shutdown()


@pytest.fixture
def instrumentor(sim_build: NvmlSimulator) -> Iterator[GPUInstrumentor]:
    inst = GPUInstrumentor()
    yield inst
    # A test that failed while a simulated call hangs would otherwise stop on that call:
    # stopping the sampler waits for it, and nvmlShutdown waits for the simulator's lock.
    sim_build.release()
    if inst.is_instrumented_by_opentelemetry:
        inst.uninstrument()


@pytest.fixture(autouse=True)
def _no_process_state_carried_over() -> Iterator[None]:
    """Every test starts from the state a fresh process has.

    visiontel.gpu has no module-level log-once or rate-limit state: each Sampler and
    EventWatcher owns its RateLimitedLog, so a new instrument() starts a fresh one. What a
    process keeps is the instrumentor, a singleton (BaseInstrumentor): left instrumented,
    the next test's instrument() would be ignored. Reset here any process-wide state added
    later (a module-level "warned once" set, a cache of answers from the driver).
    """
    yield
    inst = GPUInstrumentor()
    if inst.is_instrumented_by_opentelemetry:
        inst.uninstrument()
