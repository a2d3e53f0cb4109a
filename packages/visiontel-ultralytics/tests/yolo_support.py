"""Models, inputs and telemetry plumbing shared by the visiontel-ultralytics tests.

Models are built from the yaml files Ultralytics ships (random weights, nothing downloaded);
random weights find nothing at the default ``conf``, so tests that need detections pass
``conf=CONF``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import visiontel.torch as vt
import visiontel.ultralytics
from visiontel.ultralytics import instrument_yolo

CONF = 1e-6
IMGSZ = 64
STAGES = ("preprocess", "inference", "postprocess")
CLASS_METRIC = "visiontel.inference.class.detections"
CONFIDENCE_METRIC = "visiontel.inference.confidence"
DURATION_METRIC = "visiontel.inference.duration"
DETECTIONS_METRIC = "visiontel.inference.detections"


@dataclass
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self) -> list[ReadableSpan]:
        assert vt.flush(10.0), "resolver did not drain"
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name == name]

    def collect(self) -> Any:
        """A metrics collection once every finished image's metrics are recorded."""
        assert visiontel.ultralytics.flush(10.0), "metrics worker did not drain"
        return self.reader.get_metrics_data()

    def metric_points(self, name: str, scope: str | None = None, data: Any = None) -> list[Any]:
        """The points of metric ``name``; from ``data`` if given, else a new collection (the
        SDK hands out a point's exemplars in one collection only: pass the same ``data`` to
        read several metrics' exemplars)."""
        if data is None:
            data = self.collect()
        points: list[Any] = []
        for resource_metrics in data.resource_metrics if data else ():
            for scope_metrics in resource_metrics.scope_metrics:
                if scope is not None and scope_metrics.scope.name != scope:
                    continue
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points

    def class_counts(self) -> dict[str, int]:
        """Detections per ``visiontel.detection.class`` label (all models together)."""
        counts: dict[str, int] = {}
        for point in self.metric_points(CLASS_METRIC):
            label = point.attributes["visiontel.detection.class"]
            counts[label] = counts.get(label, 0) + point.value
        return counts

    def instrument(self, model: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("tracer_provider", self.tracer_provider)
        kwargs.setdefault("meter_provider", self.meter_provider)
        return instrument_yolo(model, **kwargs)


def make_telemetry() -> Telemetry:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return Telemetry(tracer_provider, MeterProvider(metric_readers=[reader]), exporter, reader)


def yolo(config: str = "yolov8n.yaml") -> Any:
    """A randomly initialised Ultralytics model built from one of its bundled yaml files."""
    from ultralytics import YOLO

    model = YOLO(config)
    network = model.model
    # A pose model gets kpt_shape from its checkpoint or training; Ultralytics 8.3.0's
    # predictor fails without it on a model built from yaml.
    if "kpt_shape" in getattr(network, "yaml", {}) and not hasattr(network, "kpt_shape"):
        network.kpt_shape = network.yaml["kpt_shape"]
    return model


def many_classes(model: Any, seed: int = 0) -> Any:
    """Make the detection head's class scores differ from anchor to anchor.

    A freshly built head starts every class at the same low prior, so random weights find
    one class almost everywhere; unit-variance class weights make them find dozens.
    """
    import torch

    head = model.model.model[-1]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for branch in head.cv3:
            conv = branch[-1]
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
            conv.bias.zero_()
    return model


def image(seed: int = 0, height: int = 64, width: int = 80) -> np.ndarray:
    """A BGR uint8 image of noise (different seeds, different images)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_image(path: Path, seed: int = 0) -> Path:
    assert cv2.imwrite(str(path), image(seed)), f"could not write {path}"
    return path


def write_video(path: Path, frames: int = 3, seed: int = 0) -> Path:
    """An MJPG .avi of ``frames`` noise frames, 80×64."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (80, 64))
    assert writer.isOpened(), "OpenCV cannot write MJPG video here"
    for index in range(frames):
        writer.write(image(seed + index))
    writer.release()
    capture = cv2.VideoCapture(str(path))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    assert count == frames, f"{path} holds {count} frames, not {frames}"
    return path


def image_spans(spans: Iterable[ReadableSpan], model: str = "yolov8n") -> list[ReadableSpan]:
    """The per-image spans (``predict <model>`` or ``track <model>``), in start order."""
    found = [s for s in spans if s.name in (f"predict {model}", f"track {model}")]
    return sorted(found, key=lambda s: s.start_time or 0)


def children(spans: Iterable[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    parent_id = parent.context.span_id
    found = [s for s in spans if s.parent is not None and s.parent.span_id == parent_id]
    return sorted(found, key=lambda s: s.start_time or 0)


def child_names(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[str]:
    return [s.name for s in children(spans, parent)]


def boxes_of(results: Sequence[Any]) -> list[np.ndarray]:
    """Every result's detections (``xyxy, conf, cls`` rows) as numpy, for comparisons."""
    return [r.boxes.data.detach().cpu().numpy() for r in results]


def attribute_values(telemetry: Telemetry, names: Sequence[str]) -> list[Any]:
    """Every attribute value of every span and of every point of the ``names`` metrics."""
    values: list[Any] = []
    for span in telemetry.spans():
        values.extend((span.attributes or {}).values())
        for event in span.events:
            values.extend((event.attributes or {}).values())
    for name in names:
        for point in telemetry.metric_points(name):
            values.extend(point.attributes.values())
    return values


def console_objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects the console exporters printed, among any other output lines."""
    decoder = json.JSONDecoder()
    objects: list[dict[str, Any]] = []
    position = 0
    while True:
        start = text.find("{", position)
        if start < 0:
            return objects
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            position = start + 1
            continue
        if isinstance(value, dict):
            objects.append(value)
        position = end


def console_spans(objects: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if "context" in o and "name" in o and "kind" in o]


def console_points(objects: Iterable[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = []
    for obj in objects:
        for resource_metrics in obj.get("resource_metrics", []):
            for scope_metrics in resource_metrics.get("scope_metrics", []):
                for metric in scope_metrics.get("metrics", []):
                    if metric.get("name") == name:
                        points.extend(metric["data"]["data_points"])
    return points
