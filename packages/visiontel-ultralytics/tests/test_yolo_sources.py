"""Every way of calling the predictor: arrays, lists, files, video, streams, model(), track()."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from visiontel.ultralytics import _callbacks

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
    write_image,
    write_video,
    yolo,
)


def _stages_below_each(spans: list[ReadableSpan], roots: list[ReadableSpan]) -> None:
    for root in roots:
        assert child_names(spans, root)[:3] == list(STAGES), root.name


def test_numpy_array_and_model_call(telemetry: Telemetry) -> None:
    model = telemetry.instrument(yolo())
    model.predict(image(0), imgsz=IMGSZ, verbose=False)
    model(image(1), imgsz=IMGSZ, verbose=False)  # Model.__call__

    spans = telemetry.spans()
    roots = image_spans(spans)
    assert len(roots) == 2
    _stages_below_each(spans, roots)
    for root in roots:  # in memory: Ultralytics' made-up "image0.jpg" is not a source
        assert root.attributes["visiontel.source.kind"] == "array"
        assert "visiontel.source.name" not in root.attributes
        assert "visiontel.frame.index" not in root.attributes


def test_list_of_one_is_a_plain_image_span(telemetry: Telemetry) -> None:
    model = telemetry.instrument(yolo())
    model.predict([image()], imgsz=IMGSZ, verbose=False)

    spans = telemetry.spans()
    [root] = image_spans(spans)
    assert not [s for s in spans if "batch" in s.name]
    assert root.attributes["visiontel.batch.size"] == 1
    _stages_below_each(spans, [root])


def test_image_file_path(telemetry: Telemetry, tmp_path: Path) -> None:
    path = write_image(tmp_path / "street.jpg")
    model = telemetry.instrument(yolo())
    model.predict(str(path), imgsz=IMGSZ, verbose=False)
    model.predict(path, imgsz=IMGSZ, verbose=False)

    spans = telemetry.spans()
    roots = image_spans(spans)
    assert len(roots) == 2
    _stages_below_each(spans, roots)
    for root in roots:
        assert Path(root.attributes["visiontel.source.name"]).name == "street.jpg"
        assert root.attributes["visiontel.source.kind"] == "image"
        assert root.attributes["visiontel.frame.index"] == 0


def test_video_file_numbers_its_frames(telemetry: Telemetry, tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", frames=4)
    model = telemetry.instrument(yolo())
    results = model.predict(str(video), imgsz=IMGSZ, conf=CONF, verbose=False)
    assert len(results) == 4

    spans = telemetry.spans()
    roots = image_spans(spans)
    assert [r.attributes["visiontel.frame.index"] for r in roots] == [0, 1, 2, 3]
    assert {r.attributes["visiontel.source.kind"] for r in roots} == {"video"}
    assert {Path(r.attributes["visiontel.source.name"]).name for r in roots} == {"clip.avi"}
    assert len({r.context.trace_id for r in roots}) == 4
    _stages_below_each(spans, roots)

    # the next predict numbers the frames from 0 again
    telemetry.exporter.clear()
    model.predict(str(video), imgsz=IMGSZ, verbose=False)
    again = image_spans(telemetry.spans())
    assert [r.attributes["visiontel.frame.index"] for r in again] == [0, 1, 2, 3]


def test_stream_generator_consumed_fully(telemetry: Telemetry, tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", frames=3)
    model = telemetry.instrument(yolo())
    generator = model.predict(str(video), imgsz=IMGSZ, stream=True, verbose=False)
    assert image_spans(telemetry.spans()) == []  # nothing runs before the first next()

    seen = 0
    for _ in generator:
        seen += 1
        # each frame's span has ended by the time its result is handed out
        assert len(image_spans(telemetry.spans())) == seen
    roots = image_spans(telemetry.spans())
    assert [r.attributes["visiontel.frame.index"] for r in roots] == [0, 1, 2]
    assert all(r.status.status_code is StatusCode.UNSET for r in roots)
    assert not _callbacks._runs  # on_predict_end closed the run


def test_abandoned_stream_leaves_no_open_batch(telemetry: Telemetry, tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", frames=3)
    model = telemetry.instrument(yolo())
    generator = model.predict(str(video), imgsz=IMGSZ, stream=True, verbose=False)
    next(generator)
    generator.close()  # what dropping the last reference does
    del generator

    spans = telemetry.spans()
    roots = image_spans(spans)
    assert len(roots) == 1
    assert roots[0].attributes["visiontel.frame.index"] == 0
    _stages_below_each(spans, roots)
    assert all(run.batch is None for run in _callbacks._runs.values())
    assert sum(s.name in STAGES for s in spans) == 3  # no stage of a second frame began

    # a later predict on the same model runs and is traced normally
    telemetry.exporter.clear()
    results = model.predict(image(), imgsz=IMGSZ, conf=CONF, verbose=False)
    spans = telemetry.spans()
    [root] = image_spans(spans)
    assert root.status.status_code is StatusCode.UNSET
    assert root.attributes["visiontel.detections"] == len(results[0].boxes)
    _stages_below_each(spans, [root])
    assert all(s.status.status_code is not StatusCode.ERROR for s in spans)


def test_track_on_video_adds_tracker_spans(telemetry: Telemetry, tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", frames=3)
    model = telemetry.instrument(yolo())
    results = model.track(str(video), imgsz=IMGSZ, conf=CONF, verbose=False)
    assert len(results) == 3

    spans = telemetry.spans()
    roots = image_spans(spans)
    assert [r.name for r in roots] == ["track yolov8n"] * 3
    assert [r.attributes["visiontel.frame.index"] for r in roots] == [0, 1, 2]
    for root in roots:
        below = children(spans, root)
        assert [s.name for s in below] == [*STAGES, "tracker"]
        tracker = below[-1]
        assert tracker.attributes["visiontel.stage"] == "tracker"
        assert tracker.instrumentation_scope.name == "visiontel.ultralytics"
        assert tracker.attributes["visiontel.model.name"] == "yolov8n"
        # the tracker runs after postprocess, inside the image span
        assert below[2].end_time <= tracker.start_time <= tracker.end_time <= root.end_time

    tracker_points = [
        p
        for p in telemetry.metric_points(DURATION_METRIC)
        if p.attributes.get("visiontel.stage") == "tracker"
    ]
    assert sum(p.count for p in tracker_points) == 3
    assert tracker_points[0].attributes["visiontel.model.name"] == "yolov8n"

    # a predict on the same model afterwards has no tracker span
    telemetry.exporter.clear()
    model.predict(image(), imgsz=IMGSZ, verbose=False)
    spans = telemetry.spans()
    [root] = image_spans(spans)
    assert root.name == "predict yolov8n"
    assert "tracker" not in child_names(spans, root)
