"""An instrumented model behaves like an uninstrumented one: same results, copies, pickles."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import torch

from visiontel.torch import is_instrumented
from visiontel.ultralytics import _callbacks, _ultralytics_private, uninstrument_yolo

from yolo_support import (
    CONF,
    IMGSZ,
    STAGES,
    Telemetry,
    boxes_of,
    children,
    image,
    image_spans,
    yolo,
)


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_results_are_those_of_the_uninstrumented_model(telemetry: Telemetry) -> None:
    model = yolo()
    images = [image(0), image(1)]
    plain = [boxes_of(model.predict(i, imgsz=IMGSZ, conf=CONF, verbose=False)) for i in images]
    plain_batch = boxes_of(model.predict(images, imgsz=IMGSZ, conf=CONF, verbose=False))
    assert all(len(b[0]) for b in plain)

    telemetry.instrument(model)
    traced = [boxes_of(model.predict(i, imgsz=IMGSZ, conf=CONF, verbose=False)) for i in images]
    traced_batch = boxes_of(model.predict(images, imgsz=IMGSZ, conf=CONF, verbose=False))
    for a, b in zip(plain, traced):
        _same(a, b)
    _same(plain_batch, traced_batch)
    assert len(image_spans(telemetry.spans())) == 4

    assert uninstrument_yolo(model) is True
    assert uninstrument_yolo(model) is False
    telemetry.exporter.clear()
    after = boxes_of(model.predict(images[0], imgsz=IMGSZ, conf=CONF, verbose=False))
    _same(plain[0], after)
    assert image_spans(telemetry.spans()) == []
    # nothing of ours is left in the model's callback table
    for event, callbacks in model.callbacks.items():
        for callback in callbacks:
            assert getattr(callback, "func", None) is not _callbacks.start_run, event
            assert getattr(callback, "__module__", "") != _callbacks.__name__, event


def test_deepcopy_of_an_instrumented_model_is_traced_too(telemetry: Telemetry) -> None:
    model = telemetry.instrument(yolo())
    twin = copy.deepcopy(model)
    assert twin.model is not model.model
    expected = boxes_of(model.predict(image(), imgsz=IMGSZ, conf=CONF, verbose=False))
    results = twin.predict(image(), imgsz=IMGSZ, conf=CONF, verbose=False)
    _same(boxes_of(results), expected)

    spans = telemetry.spans()
    roots = image_spans(spans)
    assert len(roots) == 2
    assert len({r.context.trace_id for r in roots}) == 2
    for root in roots:
        stages = children(spans, root)
        assert [s.name for s in stages] == list(STAGES)
        assert [s.name for s in children(spans, stages[1])] == ["inference yolov8n"]


def test_pickle_of_an_instrumented_model(telemetry: Telemetry) -> None:
    model = telemetry.instrument(yolo())
    restored_yolo = pickle.loads(pickle.dumps(model))  # before predict: all of it
    expected = model.predict(image(), imgsz=IMGSZ, conf=CONF, verbose=False)

    # after a traced predict, the network the predictor runs carries visiontel-torch's hooks
    network = _ultralytics_private.torch_module(model.predictor.model)
    assert is_instrumented(network)
    for restored in (pickle.loads(pickle.dumps(network)), copy.deepcopy(network)):
        assert restored is not network
        with torch.inference_mode():
            x = torch.rand(1, 3, IMGSZ, IMGSZ)
            torch.testing.assert_close(restored.eval()(x)[0], network.eval()(x)[0])

    # the unpickled model predicts like the original, and its callbacks came along
    results = restored_yolo.predict(image(), imgsz=IMGSZ, conf=CONF, verbose=False)
    _same(boxes_of(results), boxes_of(expected))
    starts = restored_yolo.callbacks["on_predict_start"]
    assert sum(getattr(c, "func", None) is _callbacks.start_run for c in starts) == 1
