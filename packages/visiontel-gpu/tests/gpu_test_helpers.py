"""Helpers shared by the visiontel-gpu tests (a unique module name: conftest.py is not
importable by name when several distributions' tests run in one pytest session)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from visiontel.gpu.testing import NvmlSimulator

T = TypeVar("T")
# How long tests let refresh() and eventually() wait: a guard that turns a hang into a
# failure, never a speed bound (speed is measured in bench/).
GUARD_S = 30.0


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


def point(
    points: dict[str, list[tuple[dict[str, Any], float]]], name: str, **attrs: Any
) -> float | None:
    """The value of the one point of `name` whose attributes include `attrs`."""
    found = [v for a, v in points.get(name, []) if all(a.get(k) == x for k, x in attrs.items())]
    assert len(found) <= 1, f"{name} {attrs}: {found}"
    return found[0] if found else None


def eventually(predicate: Callable[[], T], what: str, timeout: float = GUARD_S) -> T:
    """Poll `predicate` until it returns something true, which is returned; fail after
    `timeout` s, naming `what` was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)
