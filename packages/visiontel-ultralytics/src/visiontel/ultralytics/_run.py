"""One ``predict``/``track`` call of one predictor: its attributes and the batch in flight.

Spans per batch of ``n`` images:

- ``n == 1``: one span per image (``predict yolov8n``, or ``track yolov8n``), a new trace or
  a child of the caller's current (or propagated) context, with the stage spans
  ``preprocess``, ``inference``, ``postprocess`` and, for ``track()``, ``tracker`` below it.
- ``n > 1``: the same span for every image, and one batch span (``predict batch yolov8n``)
  linked to each of them, holding the stage spans (the stages run once per batch).

Nothing here may raise into Ultralytics: every entry point reports and swallows its own
failures, and a stage whose telemetry failed still runs exactly once.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, Status, StatusCode

from visiontel._support.livespans import LiveSpans
from visiontel.propagation import strip_credentials
from visiontel.torch import stage
from visiontel.torch._runtime import runtime_for
from visiontel.torch._safety import report_internal_error
from visiontel.ultralytics import _metrics, _ultralytics_private
from visiontel.ultralytics._config import UltralyticsConfig
from visiontel.ultralytics._metrics import PredictMetrics

_STAGES = ("preprocess", "inference", "postprocess")
_MAX_SOURCES = 4096  # frame counters kept per run (one per video file or stream)


class Telemetry:
    """The tracer and instruments of one pair of providers."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: Any,
    ) -> None:
        from visiontel.ultralytics.version import SCHEMA_URL, __version__

        self.tracer = trace.get_tracer(
            "visiontel.ultralytics", __version__, tracer_provider, schema_url=SCHEMA_URL
        )
        self.metrics = PredictMetrics(meter_provider)
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        # visiontel-torch's runtime for the same providers: stage durations and detections
        # go to its instruments, so each metric has one definition across both packages
        self.runtime = runtime_for(tracer_provider, meter_provider)
        # this package's own spans (image, tracker), cheap where the SDK allows it
        scope = ("visiontel.ultralytics", __version__, SCHEMA_URL)
        self.spans = LiveSpans(tracer_provider, self.tracer, scope)
        self.spans.later = self.runtime.resolver.later


class _Batch:
    __slots__ = ("context", "images", "parent", "tracker_start")

    def __init__(self, images: list[Span], parent: Span, context: Any) -> None:
        self.images = images
        self.parent = parent  # the span the stage spans go under
        self.context = context  # a context holding ``parent``
        self.tracker_start: tuple[int, int] | None = None


class PredictRun:
    def __init__(
        self, predictor: Any, config: UltralyticsConfig, telemetry: Telemetry, torch_traced: bool
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        args = predictor.args
        backend = predictor.model
        self.mode = "track" if getattr(args, "mode", None) == "track" else "predict"
        self.model_name = config.model_name or model_stem(
            _ultralytics_private.model_source(predictor)
        )
        metadata = _ultralytics_private.metadata(backend)
        version = config.model_version or metadata.get("date")
        self.model_version = str(version) if version else None
        task = getattr(args, "task", None) or getattr(backend, "task", None)
        self.task = str(task) if task else "detect"
        self.device = getattr(predictor, "device", None)
        self.format = _ultralytics_private.backend_format(backend) or "unknown"
        identity: dict[str, Any] = {"visiontel.model.name": self.model_name}
        if self.model_version:
            identity["visiontel.model.version"] = self.model_version
        self.attributes: dict[str, Any] = {
            **identity,
            "visiontel.ultralytics.task": self.task,
            "visiontel.ultralytics.format": self.format,
            "visiontel.ultralytics.half": _ultralytics_private.runs_fp16(backend),
            "visiontel.ultralytics.device": str(self.device),
        }
        imgsz = getattr(predictor, "imgsz", None) or getattr(args, "imgsz", None)
        if isinstance(imgsz, int):
            imgsz = [imgsz, imgsz]
        if isinstance(imgsz, (list, tuple)) and all(isinstance(v, int) for v in imgsz):
            self.attributes["visiontel.ultralytics.imgsz"] = list(imgsz)
        names = getattr(backend, "names", None) or {}
        self.labels = _metrics.class_labels(names, config.top_classes, config.classes)
        class_identity = {**identity, "visiontel.ultralytics.task": self.task}
        self.class_attributes = {
            label: {**class_identity, "visiontel.detection.class": label}
            for label in {*self.labels, _metrics.OTHER}
        }
        self.detection_attributes = dict(class_identity)
        self._stages = {
            name: stage(
                name,
                model=self.model_name,
                version=self.model_version,
                device=self.device,
                # the instrumented network records its own "inference" duration
                metric=not (name == "inference" and torch_traced),
                _runtime=telemetry.runtime,
            )
            for name in _STAGES
        }
        self._frames: dict[str, int] = {}
        self._in_stage: str | None = None
        self.batch: _Batch | None = None

    def reset(self) -> None:
        """Ready for another predict call: frame numbers restart, no batch is open."""
        self.abort(None)
        self._frames.clear()
        self._in_stage = None

    # -- batches ---------------------------------------------------------------------------
    def begin_batch(self, predictor: Any) -> None:
        if self.batch is not None:  # the previous batch never ended (an error upstream)
            self.abort(None)
        paths = list(predictor.batch[0]) if predictor.batch else []
        size = len(paths) or 1
        now = time.time_ns()
        parent_context = otel_context.get_current()
        tracer, spans = self.telemetry.tracer, self.telemetry.spans
        kind = getattr(getattr(predictor, "dataset", None), "mode", None)
        in_memory = _ultralytics_private.in_memory_source(predictor)
        if in_memory:  # numpy, PIL or tensor input: the "paths" are made-up names
            kind, paths = in_memory, []
        images: list[Span] = []
        for index in range(size):
            attributes = {**self.attributes, "visiontel.batch.size": size}
            if paths:
                source = strip_credentials(str(paths[index]))
                attributes["visiontel.source.name"] = source
                attributes["visiontel.frame.index"] = self._next_frame(source)
            if isinstance(kind, str):
                attributes["visiontel.source.kind"] = kind
            images.append(  # visiontel-torch's live spans: the SDK's span, made cheaply
                spans.start(
                    f"{self.mode} {self.model_name}", attributes, now, context=parent_context
                )
            )
        if size == 1:
            parent = images[0]
        else:
            parent = tracer.start_span(
                f"{self.mode} batch {self.model_name}",
                context=parent_context,
                attributes={**self.attributes, "visiontel.batch.size": size},
                links=[Link(span.get_span_context()) for span in images],
                start_time=now,
            )
        self.batch = _Batch(images, parent, trace.set_span_in_context(parent, parent_context))

    def _next_frame(self, source: str) -> int:
        index = self._frames.get(source)
        if index is None:
            if len(self._frames) >= _MAX_SOURCES:
                self._frames.clear()
            index = 0
        self._frames[source] = index + 1
        return index

    def run_stage(self, name: str, call: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        batch = self.batch
        # Untimed: a stage calling its parent class, and a stage the tracker runs again (8.4's
        # default TRACKTRACK repeats postprocess at looser thresholds): that time is the
        # tracker's, and a second postprocess point per image would skew the stage's metric.
        if batch is None or self._in_stage is not None or batch.tracker_start is not None:
            return call(*args, **kwargs)
        timer = self._stages[name]
        token = None
        try:
            token = otel_context.attach(batch.context)
            timer.__enter__()  # reports its own failures: never raises
            self._in_stage = name
        except Exception as exc:
            report_internal_error(f"ultralytics {name} start", exc)
            if token is not None:
                otel_context.detach(token)
            return call(*args, **kwargs)
        try:
            result = call(*args, **kwargs)
        except BaseException as exc:
            self._in_stage = None
            self._close_stage(name, timer, token, exc)
            try:  # the predictor's own exception must reach the caller, not one of ours
                self.abort(exc)
            except Exception as internal:
                report_internal_error(f"ultralytics {name} failure", internal)
            raise
        self._in_stage = None
        self._close_stage(name, timer, token, None)
        return result

    def _close_stage(
        self, name: str, timer: stage, token: object, exc: BaseException | None
    ) -> None:
        try:
            timer.__exit__(type(exc) if exc else None, exc, None)
        except Exception as internal:
            report_internal_error(f"ultralytics {name} end", internal)
        finally:  # whatever failed, the caller's context is as it was
            otel_context.detach(token)  # type: ignore[arg-type]

    def tracker_started(self) -> None:
        if self.batch is not None:
            self.batch.tracker_start = (time.time_ns(), time.perf_counter_ns())

    def tracker_ended(self) -> None:
        batch = self.batch
        if batch is None or batch.tracker_start is None:
            return
        wall_ns, perf_ns = batch.tracker_start
        batch.tracker_start = None
        elapsed_ns = time.perf_counter_ns() - perf_ns
        span = self.telemetry.spans.start(
            "tracker",
            {"visiontel.stage": "tracker", "visiontel.model.name": self.model_name},
            wall_ns,
            context=batch.context,
        )
        attributes = {"visiontel.stage": "tracker", **self.detection_attributes}
        attributes.pop("visiontel.ultralytics.task", None)
        self.telemetry.runtime.metrics.duration.record(
            elapsed_ns / 1e9, attributes, context=trace.set_span_in_context(span)
        )
        span.end(end_time=wall_ns + elapsed_ns)

    def end_batch(self, predictor: Any) -> None:
        batch, self.batch = self.batch, None
        if batch is None:
            return
        results = getattr(predictor, "results", None) or []
        end_ns = time.time_ns()
        seen: list[tuple[Any, Any, Any]] = []  # (detections container or probs, count, context)
        for index, span in enumerate(batch.images):
            try:
                if index < len(results):
                    seen.append(self._observe(results[index], span))
            except Exception as exc:
                report_internal_error("ultralytics results", exc)
            span.end(end_time=end_ns)
        if batch.parent is not batch.images[0]:
            batch.parent.end(end_time=end_ns)
        if seen:
            _metrics.worker().submit(functools.partial(self._record, seen))

    def abort(self, exc: BaseException | None) -> None:
        """End a batch that will never reach ``on_predict_batch_end``."""
        batch, self.batch = self.batch, None
        if batch is None:
            return
        description = type(exc).__name__ if exc is not None else "batch abandoned"
        for span in {id(s): s for s in [*batch.images, batch.parent]}.values():
            span.set_status(Status(StatusCode.ERROR, description))
            if isinstance(exc, Exception):
                span.record_exception(exc)
            span.end()

    # -- what the model saw ----------------------------------------------------------------
    def _observe(self, result: Any, span: Span) -> tuple[Any, Any, Any]:
        """What the metrics worker needs of one image; only shapes are read here."""
        context = trace.set_span_in_context(span)
        probs = getattr(result, "probs", None)
        if probs is not None:  # classifier: its top-1 class counts as one "detection"
            return probs, None, context
        for boxes in _ultralytics_private.iter_results_boxes(result):
            count = len(boxes)  # a shape: no device sync
            span.set_attribute("visiontel.detections", count)
            return boxes, count, context
        return None, None, context

    def _record(self, seen: list[tuple[Any, Any, Any]]) -> None:
        """On the metrics worker: detections per image, per class, and confidences."""
        detections = self.telemetry.runtime.metrics.detections
        class_metrics = self.config.class_metrics
        for found, count, context in seen:
            if count is not None:
                detections.record(count, self.detection_attributes, context=context)
            if found is None or not class_metrics or count == 0:
                continue
            if count is None:  # classifier probabilities
                top = found.data.max(0)
                classes, confidences = [float(top.indices)], [float(top.values)]
            else:
                classes, confidences = _metrics.values(found.cls), _metrics.values(found.conf)
            _metrics.record_classes(
                self.telemetry.metrics,
                labels=self.labels,
                attributes=self.class_attributes,
                classes=classes,
                confidences=confidences,
                max_confidences=self.config.max_confidences,
                context=context,
            )


def model_stem(model: Any) -> str:
    """``yolov8n`` for ``yolov8n.pt``, ``yolov8n.yaml``, ``dir/yolov8n.onnx`` or a Triton URL."""
    if model is None:
        return "yolo"
    text = strip_credentials(str(model))
    if "://" in text:
        text = text.split("?", 1)[0].rstrip("/")
    stem = PurePath(text.rsplit("/", 1)[-1]).stem if text else ""
    return stem[:128] or type(model).__name__
