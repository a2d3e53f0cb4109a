"""`visiontel demo --model yolov8n`: Ultralytics in the detector, traced by visiontel-ultralytics.

One run (module fixture: YOLOv8n from Ultralytics' bundled yaml, random weights, a few
frames) must put the ``predict yolov8n`` span with its ``preprocess``, ``inference`` and
``postprocess`` children into each frame's trace, under the detector's ``detect`` span,
and the tracker must get detections. Bad ``--weights`` and a missing Ultralytics each end
the run with one line saying what to do.
"""

from __future__ import annotations

import collections
import json
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest
from demo_support import clean_env, one_line_error, run_visiontel

FRAMES = 5
STAGES = ("preprocess", "inference", "postprocess")


def _spans(run_dir: pathlib.Path, service: str) -> list[dict[str, Any]]:
    spans = []
    for line in (run_dir / service / "traces.jsonl").read_text().splitlines():
        for resource in json.loads(line)["resourceSpans"]:
            for scope in resource["scopeSpans"]:
                for span in scope["spans"]:
                    spans.append({**span, "service": service, "scope": scope["scope"]["name"]})
    return spans


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("yolo")
    result = run_visiontel(
        "demo", "--model", "yolov8n", "--frames", str(FRAMES), "--fps", "0", cwd=cwd
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    (run_dir,) = (cwd / "visiontel-output").iterdir()
    return {"stdout": result.stdout, "stderr": result.stderr, "run_dir": run_dir}


def test_progress_and_what_was_built(demo: dict[str, Any]) -> None:
    out = demo["stdout"]
    assert "Traceback" not in out + demo["stderr"]
    assert "model yolov8n from Ultralytics' yolov8.yaml (random weights, conf 0.0001" in out
    assert re.search(rf"frames {FRAMES}/{FRAMES} +[0-9.]+ fps", out), out
    waterfall = out[out.index("Trace waterfall") :]
    for name in ("detect", "predict yolov8n", "preprocess", "inference yolov8n", "postprocess"):
        assert f" {name} " in waterfall, (name, waterfall)


def test_predict_spans_join_each_frame_trace(demo: dict[str, Any]) -> None:
    run_dir = demo["run_dir"]
    captures = _spans(run_dir, "frame-source")
    detector = _spans(run_dir, "detector")
    tracker = _spans(run_dir, "tracker")
    assert len([s for s in captures if s["name"] == "capture"]) == FRAMES
    by_trace: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for span in detector + tracker:
        by_trace[span["traceId"]].append(span)
    for capture in (s for s in captures if s["name"] == "capture"):
        members = by_trace[capture["traceId"]]
        (detect,) = [s for s in members if s["name"] == "detect"]
        (predict,) = [s for s in members if s["name"] == "predict yolov8n"]
        assert predict["scope"] == "visiontel.ultralytics"
        # The frame's context was current when predict ran: a child, not a trace of its own.
        assert predict["parentSpanId"] == detect["spanId"]
        children = {s["name"]: s for s in members if s.get("parentSpanId") == predict["spanId"]}
        assert set(STAGES) <= children.keys(), children.keys()
        # visiontel-torch's forward span below the inference stage.
        forward = [s for s in members if s["name"] == "inference yolov8n"]
        assert [s["parentSpanId"] for s in forward] == [children["inference"]["spanId"]]
        assert any(s["name"] == "track" for s in members)


def test_tracker_gets_detections(demo: dict[str, Any]) -> None:
    # Random weights detect nothing at Ultralytics' default conf: the demo's conf shows boxes.
    bodies = [
        record["body"]["stringValue"]
        for line in (demo["run_dir"] / "tracker" / "logs.jsonl").read_text().splitlines()
        for rl in json.loads(line)["resourceLogs"]
        for scope in rl["scopeLogs"]
        for record in scope["logRecords"]
    ]
    counts = [int(m.group(1)) for b in bodies if (m := re.match(r"frame \d+: (\d+) detections", b))]
    assert len(counts) == FRAMES and all(count > 0 for count in counts), bodies
    metrics = (demo["run_dir"] / "detector" / "metrics.jsonl").read_text()
    assert "visiontel.inference.class.detections" in metrics  # visiontel-ultralytics' own


def test_missing_weights_file_is_one_line(run, tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nowhere" / "yolov8n.pt"
    result = run("demo", "--model", "yolov8n", "--weights", str(missing))
    one_line_error(result, f"--weights {missing}: no such file", "leave --weights out")


def test_unloadable_weights_is_one_line(run, tmp_path: pathlib.Path) -> None:
    junk = tmp_path / "yolov8n.pt"
    junk.write_bytes(b"not a checkpoint" * 64)
    result = run("demo", "--weights", str(junk), "--frames", "2", "--no-telemetry")
    line = one_line_error(result, f"--weights {junk} is not a model Ultralytics can load")
    assert "checkpoint saved by Ultralytics" in line


# Ultralytics stays installed for the rest of the session: the launcher is made to find none.
_NO_ULTRALYTICS = (
    "import sys\n"
    "from visiontel.demo import _yolo\n"
    "_yolo._package_dir = lambda module: None\n"
    "from visiontel.cli._main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_missing_ultralytics_names_the_pip_command(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _NO_ULTRALYTICS, "demo", "--model", "yolov8n", "--frames", "2"],
        check=False, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    one_line_error(result, "--model yolov8n runs Ultralytics", 'pip install "visiontel[yolo]"')
    assert not (tmp_path / "visiontel-output").exists()  # refused before anything started
