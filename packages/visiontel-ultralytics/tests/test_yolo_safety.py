"""Our failures never reach predict; the model's reach the caller unchanged; switching off
puts Ultralytics back as it was; an unsupported release is left alone."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

import visiontel.ultralytics
from visiontel.torch import stage
from visiontel.ultralytics import (
    UltralyticsInstrumentor,
    _callbacks,
    _instrumentor,
    _metrics,
    _ultralytics_private,
    package,
)
from visiontel.ultralytics._run import PredictRun

from yolo_support import (
    CONF,
    DETECTIONS_METRIC,
    IMGSZ,
    STAGES,
    Telemetry,
    boxes_of,
    children,
    image,
    image_spans,
    write_video,
    yolo,
)


class Boom(RuntimeError):
    pass


def _errors(caplog: pytest.LogCaptureFixture, site: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and f"internal error in {site}" in r.getMessage()
    ]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def _stage_originals() -> dict[tuple[type, str], Any]:
    return {
        (cls, name): cls.__dict__[name]
        for cls in _ultralytics_private.predictor_classes()
        for name in STAGES
        if name in cls.__dict__
    }


@pytest.mark.parametrize(
    ("target", "site"),
    [
        ((PredictRun, "begin_batch"), "ultralytics on_predict_batch_start"),
        ((_metrics, "record_classes"), "ultralytics metrics"),  # on the metrics worker
    ],
    ids=["begin_batch", "record_classes"],
)
def test_our_exception_never_reaches_predict(
    telemetry: Telemetry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    target: tuple[Any, str],
    site: str,
) -> None:
    video = str(write_video(tmp_path / "clip.avi", frames=3))
    model = yolo()
    expected = boxes_of(model.predict(video, imgsz=IMGSZ, conf=CONF, verbose=False))
    assert all(len(b) for b in expected)

    calls = []

    def broken(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        raise Boom("visiontel bug")

    monkeypatch.setattr(*target, broken)
    telemetry.instrument(model)
    with caplog.at_level(logging.ERROR, logger="visiontel"):
        results = model.predict(video, imgsz=IMGSZ, conf=CONF, verbose=False)
        assert visiontel.ultralytics.flush(10.0)

    _same(boxes_of(results), expected)
    assert len(calls) == 3  # every frame hit it ...
    [record] = _errors(caplog, site)  # ... and it was said once
    assert record.exc_info is not None and isinstance(record.exc_info[1], Boom)
    assert all(run.batch is None for run in _callbacks._runs.values())
    spans = telemetry.spans()
    if target[1] == "record_classes":
        # only the class metrics were lost: the spans and the detections metric are whole
        roots = image_spans(spans)
        assert len(roots) == 3
        assert all(r.status.status_code is StatusCode.UNSET for r in roots)
        [detections] = telemetry.metric_points(DETECTIONS_METRIC)
        assert detections.count == 3
    else:
        assert image_spans(spans) == []
        assert not [s for s in spans if s.name in STAGES]


def test_a_failure_while_closing_a_stage_never_reaches_predict(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = yolo()
    expected = boxes_of(model.predict(image(), imgsz=IMGSZ, conf=CONF, verbose=False))

    def broken(*args: Any, **kwargs: Any) -> None:
        raise Boom("visiontel bug")

    monkeypatch.setattr(stage, "__exit__", broken)
    telemetry.instrument(model)
    with caplog.at_level(logging.ERROR, logger="visiontel"):
        for _ in range(2):
            results = model.predict(image(), imgsz=IMGSZ, conf=CONF, verbose=False)
            _same(boxes_of(results), expected)
    assert not trace.get_current_span().get_span_context().is_valid  # no context leaked
    for name in STAGES:  # said once per stage, not once per frame
        [record] = _errors(caplog, f"ultralytics {name} end")
        assert record.exc_info is not None and isinstance(record.exc_info[1], Boom)


@pytest.mark.parametrize("where", ["network", "preprocess"])
def test_model_exception_propagates_and_ends_the_spans_in_error(
    telemetry: Telemetry, where: str
) -> None:
    model = telemetry.instrument(yolo())
    model.predict(image(), imgsz=IMGSZ, verbose=False)  # builds the predictor
    telemetry.exporter.clear()
    error = Boom("the model failed")

    def fail(*args: Any, **kwargs: Any) -> None:
        raise error

    predictor = model.predictor
    if where == "network":
        layer = _ultralytics_private.torch_module(predictor.model).model[3]
        handle = layer.register_forward_pre_hook(fail)
    else:
        predictor.pre_transform = fail
    with pytest.raises(Boom) as raised:
        model.predict(image(), imgsz=IMGSZ, verbose=False)
    assert raised.value is error

    spans = telemetry.spans()
    [root] = image_spans(spans)
    assert root.status.status_code is StatusCode.ERROR
    stages = children(spans, root)
    failed = "inference" if where == "network" else "preprocess"
    assert [s.name for s in stages] == list(STAGES[: STAGES.index(failed) + 1])
    assert stages[-1].status.status_code is StatusCode.ERROR
    assert all(s.status.status_code is StatusCode.UNSET for s in stages[:-1])
    if where == "network":
        [network] = children(spans, stages[-1])
        assert network.name == "inference yolov8n"
        assert network.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in root.events)
    assert all(run.batch is None for run in _callbacks._runs.values())

    # repaired, the same model predicts and is traced normally again
    if where == "network":
        handle.remove()
    else:
        del predictor.pre_transform
    telemetry.exporter.clear()
    model.predict(image(), imgsz=IMGSZ, verbose=False)
    spans = telemetry.spans()
    [root] = image_spans(spans)
    assert [s.name for s in children(spans, root)] == list(STAGES)
    assert all(s.status.status_code is StatusCode.UNSET for s in spans)


def test_uninstrument_restores_ultralytics(telemetry: Telemetry) -> None:
    originals = _stage_originals()
    table = _ultralytics_private.default_callbacks()
    assert table is not None
    before = list(table["on_predict_start"])
    instrumentor = UltralyticsInstrumentor()
    early = yolo()  # created before instrument(): keeps the table it copied
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    assert any(type(cls.__dict__[name]).__name__ == "FunctionWrapper" for cls, name in originals)
    model = yolo()
    model.predict(image(), imgsz=IMGSZ, verbose=False)
    early.predict(image(), imgsz=IMGSZ, verbose=False)
    [root] = image_spans(telemetry.spans())
    assert [s.name for s in children(telemetry.spans(), root)] == list(STAGES)

    instrumentor.uninstrument()
    telemetry.exporter.clear()
    assert _stage_originals() == originals
    assert all(cls.__dict__[name] is fn for (cls, name), fn in originals.items())
    assert table["on_predict_start"] == before
    # the model created meanwhile still holds the callback: it does nothing now
    assert _instrumentor.on_predict_start in model.callbacks["on_predict_start"]
    model.predict(image(), imgsz=IMGSZ, verbose=False)
    yolo().predict(image(), imgsz=IMGSZ, verbose=False)
    assert [s for s in telemetry.spans() if not s.name.startswith(("inference", "model."))] == []
    assert not _callbacks._runs


def test_unsupported_ultralytics_is_left_untouched(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(package, "_instruments", ("ultralytics >= 99",))
    monkeypatch.setattr(_instrumentor, "_instruments", ("ultralytics >= 99",))
    originals = _stage_originals()
    table = _ultralytics_private.default_callbacks()
    assert table is not None
    before = list(table["on_predict_start"])
    instrumentor = UltralyticsInstrumentor()
    with caplog.at_level(logging.WARNING, logger="visiontel"):
        for _ in range(2):
            instrumentor.instrument(
                tracer_provider=telemetry.tracer_provider,
                meter_provider=telemetry.meter_provider,
            )
            yolo().predict(image(), imgsz=IMGSZ, verbose=False)
            instrumentor.uninstrument()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    [warning] = warnings
    assert "ultralytics >= 99" in warning.getMessage()
    assert "left untouched" in warning.getMessage()
    assert all(cls.__dict__[name] is fn for (cls, name), fn in _stage_originals().items())
    assert _stage_originals() == originals
    assert table["on_predict_start"] == before
    assert telemetry.spans() == []
