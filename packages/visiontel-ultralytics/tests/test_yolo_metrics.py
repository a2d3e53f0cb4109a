"""Detections per class (bounded labels), confidences, exemplars, and nothing of the pixels."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch

from yolo_support import (
    CLASS_METRIC,
    CONF,
    CONFIDENCE_METRIC,
    DETECTIONS_METRIC,
    DURATION_METRIC,
    IMGSZ,
    Telemetry,
    attribute_values,
    children,
    image,
    image_spans,
    make_telemetry,
    many_classes,
    yolo,
)


def _detected(results: list[Any]) -> Counter[int]:
    return Counter(int(c) for r in results for c in r.boxes.cls.tolist())


def _predict(telemetry: Telemetry, **settings: Any) -> list[Any]:
    model = telemetry.instrument(many_classes(yolo()), **settings)
    results = model.predict([image(0), image(1)], imgsz=IMGSZ, conf=CONF, verbose=False)
    assert len(_detected(results)) >= 5, "the head should find many classes"
    return results


def test_top_classes_bounds_the_label_set(telemetry: Telemetry) -> None:
    results = _predict(telemetry, top_classes=2)
    detected = _detected(results)
    counts = telemetry.class_counts()
    assert set(counts) <= {"0", "1", "other"}
    assert counts["other"] == sum(n for c, n in detected.items() if c >= 2) > 0
    for kept in (0, 1):
        assert counts.get(str(kept), 0) == detected.get(kept, 0)
    labels = {
        p.attributes["visiontel.detection.class"]
        for p in telemetry.metric_points(CONFIDENCE_METRIC)
    }
    assert labels <= {"0", "1", "other"}


def test_top_classes_zero_keeps_only_other(telemetry: Telemetry) -> None:
    results = _predict(telemetry, top_classes=0)
    assert telemetry.class_counts() == {"other": sum(_detected(results).values())}


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_explicit_class_list(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    wanted = ["2", "11", "no-such-class"]
    if how == "environment":
        monkeypatch.setenv("VISIONTEL_ULTRALYTICS_CLASSES", ",".join(wanted))
        results = _predict(telemetry)
    else:
        results = _predict(telemetry, classes=wanted)
    detected = _detected(results)
    counts = telemetry.class_counts()
    assert set(counts) <= {"2", "11", "other"}
    assert counts.get("2", 0) == detected.get(2, 0)
    assert counts.get("11", 0) == detected.get(11, 0)
    assert counts["other"] == sum(n for c, n in detected.items() if c not in (2, 11))


def test_confidences_are_capped_per_image_but_every_detection_counts(
    telemetry: Telemetry,
) -> None:
    results = _predict(telemetry, max_confidences=3)
    found = [len(r.boxes) for r in results]
    assert min(found) > 3
    confidences = telemetry.metric_points(CONFIDENCE_METRIC)
    assert sum(p.count for p in confidences) == 3 * len(results)
    assert sum(telemetry.class_counts().values()) == sum(found)
    # the three recorded are spread over the image's detections, not its three best
    best = sorted((float(c) for c in results[0].boxes.conf), reverse=True)
    assert min(p.min for p in confidences) < best[2]
    for point in confidences:
        assert 0.0 <= point.min <= point.max <= 1.0


def test_no_confidences_and_no_class_metrics(telemetry: Telemetry) -> None:
    _predict(telemetry, max_confidences=0)
    assert sum(p.count for p in telemetry.metric_points(CONFIDENCE_METRIC)) == 0
    assert telemetry.class_counts()

    quiet = make_telemetry()  # a sink of its own for the second model
    results = _predict(quiet, class_metrics=False)
    assert quiet.metric_points(CLASS_METRIC) == []
    assert quiet.metric_points(CONFIDENCE_METRIC) == []
    [detections] = quiet.metric_points(DETECTIONS_METRIC)
    assert detections.sum == sum(len(r.boxes) for r in results)


def test_points_recorded_in_a_sampled_span_carry_its_exemplar(telemetry: Telemetry) -> None:
    model = telemetry.instrument(yolo())
    model.predict(image(), imgsz=IMGSZ, conf=CONF, verbose=False)

    spans = telemetry.spans()
    [root] = image_spans(spans)
    trace_id = root.context.trace_id
    stage_ids = {s.name: s.context.span_id for s in children(spans, root)}
    network = [s for s in spans if s.name == "inference yolov8n"]
    data = telemetry.collect()
    durations = {
        p.attributes["visiontel.stage"]: p
        for p in telemetry.metric_points(DURATION_METRIC, data=data)
    }
    assert set(durations) == {"preprocess", "inference", "postprocess"}
    for stage, point in durations.items():
        assert point.count == 1
        [exemplar] = point.exemplars
        assert exemplar.trace_id == trace_id, stage
        # the pt backend's inference point is the network forward's, from visiontel-torch
        expected = network[0].context.span_id if stage == "inference" else stage_ids[stage]
        assert exemplar.span_id == expected, stage

    [detections] = telemetry.metric_points(DETECTIONS_METRIC, data=data)
    [exemplar] = detections.exemplars
    assert (exemplar.trace_id, exemplar.span_id) == (trace_id, root.context.span_id)
    for point in telemetry.metric_points(CLASS_METRIC, data=data):
        assert point.exemplars
        assert {e.trace_id for e in point.exemplars} == {trace_id}


def test_stage_durations_are_recorded_once_per_batch(telemetry: Telemetry) -> None:
    model = telemetry.instrument(yolo())
    model.predict([image(0), image(1), image(2)], imgsz=IMGSZ, verbose=False)
    model.predict(image(3), imgsz=IMGSZ, verbose=False)
    counts = {
        p.attributes["visiontel.stage"]: p.count for p in telemetry.metric_points(DURATION_METRIC)
    }
    assert counts == {"preprocess": 2, "inference": 2, "postprocess": 2}
    [detections] = telemetry.metric_points(DETECTIONS_METRIC)
    assert detections.count == 4  # one per image


def test_no_tensor_values_or_pixels_in_any_attribute(telemetry: Telemetry) -> None:
    model = telemetry.instrument(many_classes(yolo()))
    results = model.predict([image(0), image(1)], imgsz=IMGSZ, conf=CONF, verbose=False)
    confidences = {f"{float(c):.4f}" for r in results for c in r.boxes.conf.tolist()}

    values = attribute_values(
        telemetry, [CLASS_METRIC, CONFIDENCE_METRIC, DETECTIONS_METRIC, DURATION_METRIC]
    )
    assert values
    for value in values:
        items = value if isinstance(value, (tuple, list)) else (value,)
        assert len(items) <= 2, value  # imgsz is the only sequence
        for item in items:
            # no float at all: box coordinates and confidences are never attributes
            assert isinstance(item, (str, bool, int)), repr(item)
            if isinstance(item, str):
                assert len(item) < 200, item
                assert "tensor" not in item.lower() and "array(" not in item, item
                assert not any(c in item for c in confidences), item


def test_confidences_reach_the_sdk_in_one_step_per_label_and_equal_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each image's confidences of one label are folded into the SDK's storage together;
    what a reader collects is what one ``record`` per confidence gives."""
    from opentelemetry.sdk.metrics import Histogram as SdkHistogram

    from visiontel.torch import _otel_private

    records = Counter[str]()
    sdk_record = SdkHistogram.record

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        records[self.name] += 1
        sdk_record(self, *args, **kwargs)

    monkeypatch.setattr(SdkHistogram, "record", counted)

    def confidence_points() -> list[tuple[Any, ...]]:
        telemetry = make_telemetry()
        torch.manual_seed(0)  # the same random network, so the same detections, each time
        _predict(telemetry)
        telemetry.spans()  # flushes the metrics worker too
        return sorted(
            (
                tuple(sorted(p.attributes.items())),
                p.count,
                round(p.sum, 9),
                p.min,
                p.max,
                tuple(p.bucket_counts),
            )
            for p in telemetry.metric_points(CONFIDENCE_METRIC)
        )

    folded = confidence_points()
    folded_records = records[CONFIDENCE_METRIC]
    _otel_private._use_public_api(True)
    try:
        recorded = confidence_points()
    finally:
        _otel_private._use_public_api(False)
    assert folded == recorded
    assert sum(point[1] for point in folded) == records[CONFIDENCE_METRIC] - folded_records > 0
    assert folded_records == 0, "folded: no record() per confidence"


def test_result_tensors_are_released_on_the_predicting_thread(telemetry: Telemetry) -> None:
    """The worker hands a finished job back: the results it read are freed by the thread
    that predicts (their allocator), not by the worker, even when that thread let go of
    them first."""
    import threading
    import weakref

    import visiontel.ultralytics
    from visiontel.ultralytics import _metrics

    model = telemetry.instrument(many_classes(yolo()))
    model.predict(image(0), imgsz=IMGSZ, conf=CONF, verbose=False)  # predictor built
    assert visiontel.ultralytics.flush(10.0)
    gate = threading.Event()
    _metrics.worker().submit(lambda: gate.wait(10) and None)  # the worker waits on it
    results = model.predict(image(1), imgsz=IMGSZ, conf=CONF, verbose=False)
    freed_on: list[int] = []
    weakref.finalize(results[0].boxes, lambda: freed_on.append(threading.get_ident()))
    del results
    model.predictor.results = []  # (as the next batch would): the queued job holds the last
    assert freed_on == []
    gate.set()
    assert visiontel.ultralytics.flush(10.0)
    assert freed_on == [threading.get_ident()]
