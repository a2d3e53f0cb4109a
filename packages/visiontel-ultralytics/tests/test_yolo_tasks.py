"""Every Ultralytics task: the same stage spans, its task name, and what it detected."""

from __future__ import annotations

from collections import Counter

import pytest

from yolo_support import (
    CLASS_METRIC,
    CONF,
    CONFIDENCE_METRIC,
    DETECTIONS_METRIC,
    IMGSZ,
    STAGES,
    Telemetry,
    child_names,
    children,
    image,
    image_spans,
    yolo,
)

TASKS = [
    ("yolov8n.yaml", "detect", "boxes"),
    ("yolov8n-seg.yaml", "segment", "boxes"),
    ("yolov8n-pose.yaml", "pose", "boxes"),
    ("yolov8n-obb.yaml", "obb", "obb"),
    ("yolov8n-cls.yaml", "classify", "probs"),
]


@pytest.mark.parametrize(("config", "task", "output"), TASKS, ids=[t[1] for t in TASKS])
def test_task(telemetry: Telemetry, config: str, task: str, output: str) -> None:
    name = config.removesuffix(".yaml")
    model = telemetry.instrument(yolo(config))
    assert model.task == task
    results = model.predict([image(0), image(1)], imgsz=IMGSZ, conf=CONF, verbose=False)

    spans = telemetry.spans()
    images = image_spans(spans, name)
    [batch] = [s for s in spans if s.name == f"predict batch {name}"]
    assert len(images) == 2
    for span in [*images, batch]:
        assert span.attributes["visiontel.ultralytics.task"] == task
        assert span.attributes["visiontel.model.name"] == name
    assert child_names(spans, batch) == list(STAGES)
    [inference] = [s for s in children(spans, batch) if s.name == "inference"]
    assert child_names(spans, inference) == [f"inference {name}"]

    labels = telemetry.class_counts()
    class_points = telemetry.metric_points(CLASS_METRIC)
    assert {p.attributes["visiontel.ultralytics.task"] for p in class_points} == {task}
    assert {p.attributes["visiontel.model.name"] for p in class_points} == {name}
    confidences = telemetry.metric_points(CONFIDENCE_METRIC)
    assert confidences and all(0.0 <= p.min <= p.max <= 1.0 for p in confidences)
    if output == "probs":
        # a classifier counts its top-1 class once per image; no detections histogram
        # the default top 16 class ids are tracked by name, the rest are "other"
        top = [r.probs.top1 for r in results]
        expected = Counter(model.names[c] if c < 16 else "other" for c in top)
        assert labels == dict(expected)
        assert sum(p.count for p in confidences) == 2
        top1 = [float(r.probs.top1conf) for r in results]
        assert min(top1) == pytest.approx(min(p.min for p in confidences))
        assert "visiontel.detections" not in images[0].attributes
        assert telemetry.metric_points(DETECTIONS_METRIC) == []
    else:
        found = [len(getattr(r, output)) for r in results]
        assert all(found), f"random {task} weights found nothing at conf={CONF}"
        assert sum(labels.values()) == sum(found)
        assert [s.attributes["visiontel.detections"] for s in images] == found
        [detections] = telemetry.metric_points(DETECTIONS_METRIC)
        assert detections.count == 2 and detections.sum == sum(found)
        assert detections.attributes["visiontel.ultralytics.task"] == task
