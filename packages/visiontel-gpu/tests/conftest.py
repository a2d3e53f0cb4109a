"""Fixtures: the simulated NVML built with the system C compiler, loaded by real nvidia-ml-py."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

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


def two_gpus(**extra: Any) -> dict[str, object]:
    return {"device_count": 2, **NvmlSimulator.gpu(0), **NvmlSimulator.gpu(1), **extra}


class Metrics:
    """Collects from an in-memory reader into {name: [(attributes, value)]}."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.metrics: dict[str, Any] = {}

    def collect(self) -> dict[str, list[tuple[dict[str, Any], float]]]:
        data = self.reader.get_metrics_data()
        points: dict[str, list[tuple[dict[str, Any], float]]] = {}
        self.metrics = {}
        if data is None:
            return points
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    self.metrics[metric.name] = metric
                    points[metric.name] = [
                        (dict(p.attributes or {}), p.value) for p in metric.data.data_points
                    ]
        return points


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


def point(
    points: dict[str, list[tuple[dict[str, Any], float]]], name: str, **attrs: Any
) -> float | None:
    """The value of the one point of `name` whose attributes include `attrs`."""
    found = [v for a, v in points.get(name, []) if all(a.get(k) == x for k, x in attrs.items())]
    assert len(found) <= 1, f"{name} {attrs}: {found}"
    return found[0] if found else None
