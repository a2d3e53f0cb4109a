"""Fixtures: the simulated NVML built with the system C compiler, loaded by real nvidia-ml-py."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from gpu_test_helpers import Metrics, two_gpus

from visiontel.gpu import GPUInstrumentor
from visiontel.gpu.testing import NvmlSimulator


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
def instrumentor() -> Iterator[GPUInstrumentor]:
    inst = GPUInstrumentor()
    yield inst
    if inst.is_instrumented_by_opentelemetry:
        inst.uninstrument()
