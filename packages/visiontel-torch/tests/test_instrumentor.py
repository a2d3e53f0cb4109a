from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import torch

import visiontel.torch as vt
from visiontel.torch import TorchInstrumentor, _model

from torch_support import Telemetry, TinyDetector

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "plain_app.py"


def test_discovers_root_models_without_code_changes(telemetry: Telemetry) -> None:
    instrumentor = TorchInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        version="v9",
    )
    try:
        model = TinyDetector()
        transform = torch.nn.Identity()  # no parameters: not a model, never instrumented
        for _ in range(2):
            model(transform(torch.randn(1, 3, 8, 8)))
        assert vt.is_instrumented(model)
        assert not vt.is_instrumented(transform)
        assert not vt.is_instrumented(model.backbone)  # a child, not a root
        roots = telemetry.by_name()["inference TinyDetector"]
        assert len(roots) == 2  # the discovering call is traced too
        assert roots[0].attributes["visiontel.model.version"] == "v9"
    finally:
        instrumentor.uninstrument()
    assert _model.all_instrumented() == []
    assert not torch.nn.modules.module._global_forward_pre_hooks
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_opentelemetry_instrument_traces_an_unmodified_script(tmp_path: pathlib.Path) -> None:
    bin_dir = pathlib.Path(sys.executable).parent
    agent = bin_dir / "opentelemetry-instrument"
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "detector",
        "VISIONTEL_TORCH_GRANULARITY": "stage",
        "VISIONTEL_TORCH_MODEL_VERSION": "stable",
    }
    done = subprocess.run(
        [str(agent), sys.executable, str(EXAMPLE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "last frame: 10 detections" in done.stdout
    spans = _console_spans(done.stdout)
    roots = [s for s in spans if s["name"] == "inference SmallDetector"]
    assert len(roots) == 3
    assert all(r["attributes"]["visiontel.model.version"] == "stable" for r in roots)
    assert all(r["attributes"]["visiontel.detections"] == 10 for r in roots)
    stage_names = {
        s["name"] for s in spans if s["parent_id"] in {r["context"]["span_id"] for r in roots}
    }
    assert stage_names == {"backbone", "head"}


def _console_spans(stdout: str) -> list[dict]:  # type: ignore[type-arg]
    """The console exporter prints one JSON object per span."""
    spans, depth, start = [], 0, None
    for index, char in enumerate(stdout):
        if char == "{":
            depth += 1
            if depth == 1:
                start = index
        elif char == "}" and depth:
            depth -= 1
            if depth == 0 and start is not None:
                spans.append(json.loads(stdout[start : index + 1]))
    return [s for s in spans if "context" in s]
