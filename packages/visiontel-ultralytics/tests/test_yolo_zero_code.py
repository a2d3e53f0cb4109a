"""No code change: ``opentelemetry-instrument`` runs an application and the ``yolo`` CLI.

Both print their spans and metrics with the console exporters; the tests read the JSON
objects out of stdout. The ``ultralytics`` entry point (UltralyticsInstrumentor) and
visiontel-torch's ``torch`` one run together, as they would in production.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from yolo_support import (
    CLASS_METRIC,
    STAGES,
    console_objects,
    console_points,
    console_spans,
    write_image,
    write_video,
)

BIN = Path(sys.executable).parent
APP = """
import sys

import numpy as np
from ultralytics import YOLO

model = YOLO("yolov8n.yaml")
found = 0
for seed in (0, 1):
    image = np.random.default_rng(seed).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    found += sum(len(r.boxes) for r in model.predict(image, imgsz=64, conf=1e-6))
found += sum(len(r.boxes) for r in model.track("clip.avi", imgsz=64, conf=1e-6))
print(f"FOUND {found}", flush=True)
"""


def _run(command: list[str], cwd: Path) -> tuple[list[dict[str, Any]], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="console",
        OTEL_LOGS_EXPORTER="none",
        OTEL_SERVICE_NAME="yolo-zero-code",
        YOLO_OFFLINE="1",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    process = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), *command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    return console_objects(process.stdout), process.stdout


def _children(spans: list[dict[str, Any]], parent: dict[str, Any]) -> list[dict[str, Any]]:
    found = [s for s in spans if s.get("parent_id") == parent["context"]["span_id"]]
    return sorted(found, key=lambda s: s["start_time"])


def _assert_image_tree(spans: list[dict[str, Any]], root: dict[str, Any], tracker: bool) -> None:
    below = _children(spans, root)
    assert [s["name"] for s in below] == [*STAGES, *(["tracker"] if tracker else [])]
    trace_id = root["context"]["trace_id"]
    assert {s["context"]["trace_id"] for s in below} == {trace_id}
    [network] = _children(spans, below[1])
    assert network["name"] == "inference yolov8n"
    assert network["attributes"]["visiontel.model.name"] == "yolov8n"
    layers = _children(spans, network)
    assert layers and all(s["name"].startswith("model.") for s in layers)


def _class_total(objects: list[dict[str, Any]]) -> int:
    points = console_points(objects, CLASS_METRIC)
    assert points, "no class metric printed"
    assert {p["attributes"]["visiontel.model.name"] for p in points} == {"yolov8n"}
    return sum(p["value"] for p in points)


def test_application_predict_and_track(tmp_path: Path) -> None:
    write_video(tmp_path / "clip.avi", frames=3)
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    objects, stdout = _run([sys.executable, "app.py"], tmp_path)

    spans = console_spans(objects)
    predicted = [s for s in spans if s["name"] == "predict yolov8n"]
    tracked = sorted(
        (s for s in spans if s["name"] == "track yolov8n"), key=lambda s: s["start_time"]
    )
    assert len(predicted) == 2 and len(tracked) == 3
    assert len({s["context"]["trace_id"] for s in predicted + tracked}) == 5
    for root in predicted:
        assert root["parent_id"] is None
        _assert_image_tree(spans, root, tracker=False)
    for index, root in enumerate(tracked):
        assert root["attributes"]["visiontel.frame.index"] == index
        assert root["attributes"]["visiontel.source.kind"] == "video"
        _assert_image_tree(spans, root, tracker=True)

    [found] = [line for line in stdout.splitlines() if line.startswith("FOUND ")]
    assert _class_total(objects) == int(found.split()[1]) > 0


def test_yolo_cli_predict(tmp_path: Path) -> None:
    write_image(tmp_path / "street.jpg")
    command = [
        "yolo",
        "predict",
        "model=yolov8n.yaml",
        "source=street.jpg",
        "imgsz=320",
        "save=False",
        "conf=1e-6",
    ]
    objects, _ = _run(command, tmp_path)

    spans = console_spans(objects)
    [root] = [s for s in spans if s["name"] == "predict yolov8n"]
    assert root["attributes"]["visiontel.ultralytics.imgsz"] == [320, 320]
    assert Path(root["attributes"]["visiontel.source.name"]).name == "street.jpg"
    _assert_image_tree(spans, root, tracker=False)
    assert _class_total(objects) == root["attributes"]["visiontel.detections"] > 0
