from __future__ import annotations

import torch

from visiontel.torch import count_detections

from torch_support import RgbIrFusion, Telemetry, TinyDetector, data_points


def test_duration_images_and_detections(telemetry: Telemetry) -> None:
    model = telemetry.instrument(TinyDetector(boxes_per_image=4), name="det", version="v1")
    for _ in range(3):
        model(torch.randn(2, 3, 16, 16))
    (duration,) = telemetry.metric_points("visiontel.inference.duration")
    assert duration.count == 3
    assert duration.sum > 0
    assert dict(duration.attributes) == {
        "visiontel.model.name": "det",
        "visiontel.model.version": "v1",
        "visiontel.stage": "inference",
    }
    (images,) = telemetry.metric_points("visiontel.inference.images")
    assert images.value == 6
    (detections,) = telemetry.metric_points("visiontel.inference.detections")
    assert detections.count == 6  # one point per image
    assert detections.sum == 24


def test_duration_and_detection_exemplars_point_at_the_span(telemetry: Telemetry) -> None:
    model = telemetry.instrument(TinyDetector(), name="ex", granularity="model")
    model(torch.randn(1, 3, 8, 8))
    (span,) = telemetry.spans()
    # one collection: a reservoir hands its exemplars over once, then starts again
    points = dict(data_points(telemetry.reader))
    for name in ("visiontel.inference.duration", "visiontel.inference.detections"):
        exemplars = getattr(points[name], "exemplars", None)
        assert exemplars, f"{name}: the SDK keeps exemplars of a sampled span's measurements"
        assert {(e.trace_id, e.span_id) for e in exemplars} == {
            (span.context.trace_id, span.context.span_id)
        }


def test_raw_nx6_and_custom_counters(telemetry: Telemetry) -> None:
    fusion = telemetry.instrument(RgbIrFusion(), name="fusion")
    fusion(torch.randn(1, 3, 4, 4), torch.randn(1, 1, 4, 4))
    (detections,) = telemetry.metric_points("visiontel.inference.detections")
    assert detections.sum == 5

    other = TinyDetector()
    telemetry.instrument(other, name="custom", detections=lambda out: [7 for _ in out])
    other(torch.randn(3, 3, 8, 8))
    points = {
        p.attributes["visiontel.model.name"]: p
        for p in telemetry.metric_points("visiontel.inference.detections")
    }
    assert points["custom"].sum == 21 and points["custom"].count == 3


def test_count_detections_formats() -> None:
    torchvision_style = [{"boxes": torch.zeros(3, 4)}, {"boxes": torch.zeros(0, 4)}]
    assert count_detections(torchvision_style) == [3, 0]
    assert count_detections(torch.zeros(9, 6)) == [9]
    assert count_detections([torch.zeros(2, 6), torch.zeros(5, 6)]) == [2, 5]

    class Results:
        def __init__(self, n: int) -> None:
            self.boxes = list(range(n))

    assert count_detections([Results(4), Results(1)]) == [4, 1]
    # formats whose count would need tensor values (padded batches) or unknown ones: None
    assert count_detections(torch.zeros(2, 10, 6)) is None
    assert count_detections(torch.zeros(1, 1000)) is None
    assert count_detections("text") is None
    assert count_detections([{"scores": torch.zeros(2)}]) is None
