from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports Ultralytics: never reach the network, and keep its settings file
# out of the home directory (two Ultralytics releases sharing one reset each other's).
os.environ["YOLO_OFFLINE"] = "1"
if "YOLO_CONFIG_DIR" not in os.environ:
    os.environ["YOLO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="visiontel-yolo-config-")
    atexit.register(shutil.rmtree, os.environ["YOLO_CONFIG_DIR"], ignore_errors=True)
os.environ.setdefault("YOLO_VERBOSE", "False")

import visiontel.torch as vt
from visiontel._support import env as support_env
from visiontel.torch import _model, _runtime, _safety
from visiontel.ultralytics import UltralyticsInstrumentor, _callbacks

from yolo_support import Telemetry, make_telemetry


@pytest.fixture(autouse=True)
def _fresh_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test in its own directory (Ultralytics writes runs/, exports, settings), with
    the log-once state forgotten, and nothing of ours left switched on afterwards."""
    monkeypatch.chdir(tmp_path)
    _safety.errors.reset()
    support_env.reset()
    yield
    instrumentor = UltralyticsInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    _callbacks.clear_runs()
    _callbacks.unpatch_all()
    for model in _model.all_instrumented():
        vt.uninstrument_model(model)
    _runtime.set_default_runtime(None)


@pytest.fixture
def telemetry() -> Telemetry:
    return make_telemetry()
