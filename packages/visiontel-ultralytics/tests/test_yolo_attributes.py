"""What the spans say about the model and the input, and what they must never say."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from visiontel.ultralytics import UltralyticsConfig, _callbacks
from visiontel.ultralytics._run import PredictRun, Telemetry, model_stem

from yolo_support import (
    CLASS_METRIC,
    CONF,
    DETECTIONS_METRIC,
    DURATION_METRIC,
    IMGSZ,
    STAGES,
    attribute_values,
    children,
    image,
    image_spans,
    yolo,
)
from yolo_support import Telemetry as Sink

SECRETS = ("alice", "s3cret", "t0ps3cret", "bob", "hunter2", "k3yk3y")


@pytest.mark.parametrize(
    ("source", "stem"),
    [
        ("yolov8n.pt", "yolov8n"),
        ("yolov8n.yaml", "yolov8n"),
        ("models/v2/street_cam.onnx", "street_cam"),
        (Path("/srv/models/yolo11s.engine"), "yolo11s"),
        ("C:/models/plate.torchscript", "plate"),
        ("http://bob:hunter2@triton:8000/yolo_fp16?api_key=k3yk3y", "yolo_fp16"),
        ("grpc://triton:8001/people/", "people"),
        (None, "yolo"),
    ],
)
def test_model_stem(source: object, stem: str) -> None:
    assert model_stem(source) == stem


def test_model_stem_of_anything_is_bounded_and_never_holds_credentials() -> None:
    assert len(model_stem("x" * 1000 + ".pt")) == 128
    text = model_stem("rtsp://alice:s3cret@cam/?token=t0ps3cret")
    assert not any(secret in text for secret in SECRETS)


def test_identity_and_settings_of_the_run(telemetry: Sink) -> None:
    model = telemetry.instrument(yolo())
    model.predict(image(), imgsz=96, verbose=False)
    model.predict([image(0), image(1)], imgsz=IMGSZ, half=True, device="cpu", verbose=False)

    spans = telemetry.spans()
    single, *pair = image_spans(spans)
    [batch] = [s for s in spans if s.name == "predict batch yolov8n"]
    for span in [single, *pair, batch]:
        attributes = span.attributes
        assert attributes["visiontel.model.name"] == "yolov8n"
        assert "visiontel.model.version" not in attributes  # a yaml model has no date
        assert attributes["visiontel.ultralytics.format"] == "pt"
        assert attributes["visiontel.ultralytics.device"] == "cpu"
        assert attributes["visiontel.ultralytics.task"] == "detect"
        # half=True is a request: on a CPU the model computes in FP32, and says so
        assert attributes["visiontel.ultralytics.half"] is False
    assert model.predictor.model.fp16 is False
    assert tuple(single.attributes["visiontel.ultralytics.imgsz"]) == (96, 96)
    assert single.attributes["visiontel.batch.size"] == 1
    for span in [*pair, batch]:
        assert tuple(span.attributes["visiontel.ultralytics.imgsz"]) == (IMGSZ, IMGSZ)
        assert span.attributes["visiontel.batch.size"] == 2
    assert [s.attributes["visiontel.source.kind"] for s in pair] == ["array", "array"]
    assert not any("visiontel.source.name" in s.attributes for s in pair)


def test_half_reports_what_the_backend_computes_in(telemetry: Sink) -> None:
    model = telemetry.instrument(yolo())
    model.predict(image(), imgsz=IMGSZ, verbose=False)
    predictor = model.predictor
    predictor.model.fp16 = True  # what AutoBackend sets for half=True on a GPU
    run = PredictRun(predictor, UltralyticsConfig(), Telemetry(None, None), False)
    assert run.attributes["visiontel.ultralytics.half"] is True


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_name_and_version_override(
    telemetry: Sink, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "argument":
        model = telemetry.instrument(yolo(), name="gate-cam", version="2024.06")
    else:
        monkeypatch.setenv("VISIONTEL_ULTRALYTICS_MODEL_NAME", "gate-cam")
        monkeypatch.setenv("VISIONTEL_ULTRALYTICS_MODEL_VERSION", "2024.06")
        model = telemetry.instrument(yolo())
    model.predict(image(), imgsz=IMGSZ, conf=CONF, verbose=False)

    spans = telemetry.spans()
    [root] = image_spans(spans, "gate-cam")
    stages = children(spans, root)
    assert [s.name for s in stages] == list(STAGES)
    [network] = children(spans, stages[1])
    assert network.name == "inference gate-cam"
    for span in [root, *stages, network]:
        assert span.attributes["visiontel.model.name"] == "gate-cam", span.name
        assert span.attributes["visiontel.model.version"] == "2024.06", span.name
    for metric in (DURATION_METRIC, DETECTIONS_METRIC, CLASS_METRIC):
        points = telemetry.metric_points(metric)
        assert points, metric
        for point in points:
            assert point.attributes["visiontel.model.name"] == "gate-cam"
            assert point.attributes["visiontel.model.version"] == "2024.06"


def test_instrumenting_again_replaces_the_settings(telemetry: Sink) -> None:
    model = telemetry.instrument(yolo(), version="1")
    model.predict(image(), imgsz=IMGSZ, verbose=False)
    for version in ("2", "3"):
        telemetry.instrument(model, version=version)
        model.predict(image(), imgsz=IMGSZ, verbose=False)

    roots = image_spans(telemetry.spans())
    assert [r.attributes["visiontel.model.version"] for r in roots] == ["1", "2", "3"]
    starts = model.callbacks["on_predict_start"]
    assert sum(getattr(c, "func", None) is _callbacks.start_run for c in starts) == 1


def test_credentials_in_a_stream_source_never_reach_an_attribute(telemetry: Sink) -> None:
    """A real RTSP stream cannot be opened here: the predictor of a real predict is given
    the batch Ultralytics' stream loader would produce, and the run's batch driven with it."""
    model = telemetry.instrument(yolo())
    results = model.predict(image(), imgsz=IMGSZ, conf=CONF, verbose=False)
    telemetry.exporter.clear()
    predictor = model.predictor
    url = "rtsp://alice:s3cret@cam.local:554/1?token=t0ps3cret&channel=2"
    predictor.args.model = "http://bob:hunter2@triton:8000/yolo?api_key=k3yk3y"
    run = PredictRun(
        predictor, UltralyticsConfig(), Telemetry(telemetry.tracer_provider, None), False
    )
    predictor.batch = ([url, url], [image(0), image(1)], ["", ""])
    # what the stream loader's source type says (the array predict above set "from_img")
    predictor.source_type = dataclasses.replace(predictor.source_type, stream=True, from_img=False)
    for _ in range(2):
        run.begin_batch(predictor)
        predictor.results = results * 2
        run.end_batch(predictor)

    spans = telemetry.spans()
    images = image_spans(spans, "yolo")
    assert len(images) == 4
    for span in images:
        source = span.attributes["visiontel.source.name"]
        assert source.startswith("rtsp://cam.local:554/1?")
        assert "channel=2" in source
    assert [s.attributes["visiontel.frame.index"] for s in images] == [0, 1, 2, 3]
    values = attribute_values(telemetry, [CLASS_METRIC, DETECTIONS_METRIC, DURATION_METRIC])
    text = repr(values) + repr([s.name for s in spans])
    for secret in SECRETS:
        assert secret not in text, secret
