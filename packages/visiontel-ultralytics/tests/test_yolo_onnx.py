"""A non-torch backend: a real ONNX export, run by onnxruntime through Ultralytics.

``simplify=False`` keeps the exporter from reaching for onnxslim (which Ultralytics would
try to pip-install, impossible offline); ``dynamic=False`` fixes the input at ``IMGSZ``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import onnx
import pytest

from yolo_support import (
    CONF,
    DURATION_METRIC,
    IMGSZ,
    STAGES,
    Telemetry,
    child_names,
    children,
    image,
    image_spans,
    many_classes,
    yolo,
)


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_onnx_model_gets_stage_spans_and_class_metrics(
    telemetry: Telemetry, tmp_path: Path
) -> None:
    from ultralytics import YOLO

    exported = Path(
        many_classes(yolo()).export(format="onnx", imgsz=IMGSZ, simplify=False, dynamic=False)
    )
    path = exported.rename(tmp_path / "street_cam.onnx")
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    names = ast.literal_eval(metadata["names"])

    model = telemetry.instrument(YOLO(str(path), task="detect"))
    # one image per call: a static export takes batches of one (Ultralytics 8.3.0 would
    # hand it a list as one batch)
    results = [
        result
        for seed in range(3)
        for result in model.predict(image(seed), imgsz=IMGSZ, conf=CONF, verbose=False)
    ]
    found = [len(r.boxes) for r in results]
    assert all(found)

    spans = telemetry.spans()
    assert not [s for s in spans if s.name.startswith("inference street_cam")]
    assert not [s for s in spans if s.name.startswith("model.")]
    roots = image_spans(spans, "street_cam")
    assert len(roots) == 3
    for root in roots:
        assert root.attributes["visiontel.ultralytics.format"] == "onnx"
        assert root.attributes["visiontel.model.name"] == "street_cam"
        # the export's date is the version
        assert root.attributes["visiontel.model.version"] == metadata["date"]
    assert [s.attributes["visiontel.detections"] for s in roots] == found
    assert len({s.context.trace_id for s in roots}) == 3
    for root in roots:
        assert child_names(spans, root) == list(STAGES)
        # nothing below the inference stage: onnxruntime runs the network
        [inference] = [s for s in children(spans, root) if s.name == "inference"]
        assert children(spans, inference) == []

    # without a traced network, the inference stage records its own duration
    counts = {
        p.attributes["visiontel.stage"]: p.count for p in telemetry.metric_points(DURATION_METRIC)
    }
    assert counts == {"preprocess": 3, "inference": 3, "postprocess": 3}
    counts_by_label = telemetry.class_counts()
    assert sum(counts_by_label.values()) == sum(found)
    tracked = {str(names[i]) for i in range(16)}
    assert set(counts_by_label) <= tracked | {"other"}
    assert len(counts_by_label) >= 2
