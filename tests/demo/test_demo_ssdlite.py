"""`visiontel demo --model ssdlite`: torchvision's SSDlite320 behind the same pipeline.

A realistic CPU detector (~50 ms per frame on one core) is what the benchmark reads the
telemetry's share against; this checks it serves frames with the same telemetry, and that
a missing torchvision is one line saying what to install.
"""

from __future__ import annotations

import json
import pathlib

from demo_support import clean_env, run_visiontel

FRAMES = 8


def _detector_spans(run_dir: pathlib.Path) -> list[dict[str, object]]:
    spans: list[dict[str, object]] = []
    for line in (run_dir / "detector" / "traces.jsonl").read_text().splitlines():
        for resource in json.loads(line)["resourceSpans"]:
            for scope in resource["scopeSpans"]:
                spans.extend(scope["spans"])
    return spans


def test_ssdlite_serves_every_frame_with_its_spans(tmp_path: pathlib.Path) -> None:
    result = run_visiontel("demo", "--model", "ssdlite", "--frames", str(FRAMES), cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert f"frames {FRAMES}/{FRAMES}" in result.stdout
    (run_dir,) = (tmp_path / "visiontel-output").iterdir()
    spans = _detector_spans(run_dir)
    roots = [s for s in spans if s["name"] == "inference ssdlite"]
    assert len(roots) == FRAMES
    root_ids = {s["spanId"] for s in roots}
    children = {s["name"] for s in spans if s.get("parentSpanId") in root_ids}
    assert {"transform", "backbone", "head"} <= children, children
    metrics = (run_dir / "detector" / "metrics.jsonl").read_text()
    assert "visiontel.inference.detections" in metrics
    assert '"ssdlite"' in metrics  # the model name is on the points
    assert "serving ssdlite" in (run_dir / "detector.stderr.log").read_text()


def test_missing_torchvision_is_one_line(tmp_path: pathlib.Path) -> None:
    # A torchvision that fails to import, ahead of the real one on the path.
    shadow = tmp_path / "shadow" / "torchvision"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no torchvision here')\n")
    env = clean_env()
    env["PYTHONPATH"] = str(shadow.parent)
    result = run_visiontel("demo", "--model", "ssdlite", "--frames", "2", cwd=tmp_path, env=env)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'pip install "visiontel[torchvision]"' in lines[0], lines
