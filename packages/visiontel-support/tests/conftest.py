"""Fixtures of visiontel-support's tests: no log-once state and no OTLP variable left over."""

from __future__ import annotations

import os

import pytest

from visiontel._support import env


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    env.reset()
    for name in list(os.environ):
        if name.startswith(("OTEL_EXPORTER_OTLP_", "VISIONTEL_TEST_")):
            monkeypatch.delenv(name)
