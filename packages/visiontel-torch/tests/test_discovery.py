"""Discovery finds each model's true root, and the instrumentor survives its singleton idiom."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from model_families import FAMILIES, run
from test_instrumentor import _console_spans

import visiontel.torch as vt
from visiontel.torch import TorchInstrumentor

from torch_support import Telemetry, TinyDetector, assert_no_hooks


@pytest.fixture
def discovery(telemetry: Telemetry) -> Iterator[TorchInstrumentor]:
    instrumentor = TorchInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    yield instrumentor
    instrumentor.uninstrument()


def _roots(telemetry: Telemetry) -> list[str]:
    return [s.name for s in telemetry.spans() if s.parent is None]


def test_a_root_found_first_is_folded_into_the_model_that_calls_it(
    telemetry: Telemetry, discovery: TorchInstrumentor
) -> None:
    model = TinyDetector()
    images = torch.randn(1, 3, 8, 8)
    model.head(model.neck(model.backbone(images)))  # the children alone: each one a root
    assert vt.is_instrumented(model.neck)
    model(images)
    assert vt.is_instrumented(model)
    for child in (model.backbone, model.neck, model.head):
        assert not vt.is_instrumented(child)
        assert_no_hooks(child)
    telemetry.exporter.clear()
    model(images)
    model(images)
    spans = telemetry.spans()
    assert _roots(telemetry) == ["inference TinyDetector"] * 2
    assert sorted(s.name for s in spans if s.parent is not None) == sorted(
        ["backbone", "neck", "head"] * 2
    )


def test_a_discovered_root_inside_an_instrumented_forward_is_withdrawn(
    telemetry: Telemetry, discovery: TorchInstrumentor
) -> None:
    inner = TinyDetector()
    images = torch.randn(1, 3, 8, 8)
    inner(images)  # discovered on its own
    assert vt.is_instrumented(inner)

    class Ensemble(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = inner, TinyDetector()

        def forward(self, x: torch.Tensor) -> list[object]:
            return [self.first(x), self.second(x)]

    ensemble = Ensemble()
    telemetry.instrument(ensemble, name="ensemble")  # explicit: the outer model
    telemetry.exporter.clear()
    ensemble(images)
    ensemble(images)
    assert not vt.is_instrumented(inner)
    assert _roots(telemetry) == ["inference ensemble"] * 2


def test_a_model_built_by_calling_its_own_forward_is_rooted_at_the_model(
    telemetry: Telemetry, discovery: TorchInstrumentor
) -> None:
    """DetectionModel runs self.forward while it is built; its layers are not roots."""
    model = FAMILIES["ultralytics"].build()  # built under discovery
    assert not any(vt.is_instrumented(m) for m in model.modules())
    run(model, FAMILIES["ultralytics"].example())
    assert _roots(telemetry) == ["inference DetectionModel"]
    stages = {s.name for s in telemetry.spans() if s.parent is not None}
    # its layers sit in one Sequential that is never called whole: they are the stages
    assert {"model.0", "model.9", "model.22"} <= stages


def test_a_wrapper_is_not_the_model(telemetry: Telemetry, discovery: TorchInstrumentor) -> None:
    class Service(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.detector = TinyDetector()

        def forward(self, x: torch.Tensor) -> object:
            return self.detector(x.clamp(0, 1))

    service = Service()
    service(torch.randn(1, 3, 8, 8))
    assert not vt.is_instrumented(service)
    assert vt.is_instrumented(service.detector)
    assert _roots(telemetry) == ["inference TinyDetector"]


def test_a_model_only_ever_run_through_forward_warns_once(
    telemetry: Telemetry, discovery: TorchInstrumentor, caplog: pytest.LogCaptureFixture
) -> None:
    model = TinyDetector()
    with caplog.at_level(logging.WARNING, logger="visiontel.torch"):
        for _ in range(5):
            model.forward(torch.randn(1, 3, 8, 8))
    assert _roots(telemetry) == []
    assert not any(vt.is_instrumented(m) for m in model.modules())
    warnings = [r for r in caplog.records if "runs its forward directly" in r.getMessage()]
    assert len(warnings) == 1
    assert "TinyDetector" in warnings[0].getMessage()


def test_the_singleton_idiom_removes_the_global_hook(telemetry: Telemetry) -> None:
    hooks = torch.nn.modules.module._global_forward_pre_hooks
    before = len(hooks)
    TorchInstrumentor().instrument(tracer_provider=telemetry.tracer_provider)
    assert len(hooks) == before + 1
    model = TinyDetector()
    model(torch.randn(1, 3, 8, 8))
    assert vt.is_instrumented(model)
    TorchInstrumentor().uninstrument()  # a second TorchInstrumentor(): the same singleton
    assert len(hooks) == before
    assert not vt.is_instrumented(model)
    assert_no_hooks(model)


APP = """
import sys
import numpy as np
from ultralytics import YOLO

model = YOLO("yolov8n.yaml")
if sys.argv[1] == "explicit":
    import visiontel.torch as vt
    vt.instrument_model(model.model, name="yolov8n")
image = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
for _ in range(3):
    results = model.predict(image, imgsz=160, verbose=False)
print("predicted", len(results))
"""


@pytest.mark.parametrize("mode", ["zero-code", "explicit"])
def test_an_ultralytics_app_runs_unchanged(tmp_path: Path, mode: str) -> None:
    """The app from issue 13, under ``opentelemetry-instrument`` and with explicit calls."""
    pytest.importorskip("ultralytics", reason="needs ultralytics (visiontel-torch[test])")
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(APP))
    bin_dir = Path(sys.executable).parent
    command = [sys.executable, str(app), mode]
    if mode == "zero-code":
        command = [str(bin_dir / "opentelemetry-instrument"), *command]
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "yolo-app",
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(tmp_path),
        # visiontel-torch alone: visiontel-ultralytics, when installed, would trace the
        # predictor around the network (its own tests cover that pairing)
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "ultralytics",
    }
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "predicted 1" in done.stdout
    if mode == "explicit":
        return  # the predictor runs a deep copy: a clean module, so nothing to assert on
    spans = _console_spans(done.stdout)
    roots = [s for s in spans if s["parent_id"] is None]
    assert [r["name"] for r in roots] == ["inference DetectionModel"] * 3
    for root in roots:
        children = {s["name"] for s in spans if s["parent_id"] == root["context"]["span_id"]}
        assert {"model.0", "model.22"} <= children, children
