"""The span tree of a real Ultralytics predict: per image, per batch, in the caller's trace."""

from __future__ import annotations

import itertools

from opentelemetry.trace import StatusCode

from yolo_support import (
    CONF,
    IMGSZ,
    STAGES,
    Telemetry,
    child_names,
    children,
    image,
    image_spans,
    yolo,
)


def test_one_image_gives_predict_with_stage_children_and_the_network_below_inference(
    telemetry: Telemetry,
) -> None:
    model = telemetry.instrument(yolo())
    results = model.predict(image(), imgsz=IMGSZ, conf=CONF, verbose=False)

    spans = telemetry.spans()
    [root] = image_spans(spans)
    assert root.name == "predict yolov8n"
    assert root.parent is None
    assert root.status.status_code is StatusCode.UNSET
    # each package's spans under its own scope (the network's are visiontel-torch's)
    assert root.instrumentation_scope.name == "visiontel.ultralytics"
    assert child_names(spans, root) == list(STAGES)
    stages = {s.name: s for s in children(spans, root)}
    for span in stages.values():
        assert span.attributes["visiontel.stage"] == span.name
        assert span.attributes["visiontel.model.name"] == "yolov8n"
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time
    # the stages run one after the other
    ordered = [stages[name] for name in STAGES]
    assert all(a.end_time <= b.start_time for a, b in itertools.pairwise(ordered))

    [network] = children(spans, stages["inference"])
    assert network.name == "inference yolov8n"
    assert network.instrumentation_scope.name == "visiontel.torch"
    layers = children(spans, network)
    assert layers, "the network's stage-granularity children are missing"
    assert {s.name for s in layers} <= {f"model.{i}" for i in range(23)}
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    assert root.attributes["visiontel.detections"] == len(results[0].boxes) > 0


def test_each_predict_call_is_a_trace_of_its_own(telemetry: Telemetry) -> None:
    model = telemetry.instrument(yolo())
    for seed in range(3):
        model.predict(image(seed), imgsz=IMGSZ, verbose=False)

    spans = telemetry.spans()
    roots = image_spans(spans)
    assert len(roots) == 3
    traces = {root.context.trace_id for root in roots}
    assert len(traces) == 3
    for trace_id in traces:
        in_trace = [s for s in spans if s.context.trace_id == trace_id]
        assert sorted(s.name for s in in_trace if s.name in STAGES) == sorted(STAGES)
        assert sum(s.name == "inference yolov8n" for s in in_trace) == 1


def test_a_span_current_in_the_caller_is_the_parent(telemetry: Telemetry) -> None:
    model = telemetry.instrument(yolo())
    tracer = telemetry.tracer_provider.get_tracer("caller")
    with tracer.start_as_current_span("handle request") as request:
        model.predict(image(), imgsz=IMGSZ, verbose=False)
        caller_context = request.get_span_context()

    spans = telemetry.spans()
    [root] = image_spans(spans)
    assert root.parent is not None
    assert root.parent.span_id == caller_context.span_id
    assert root.context.trace_id == caller_context.trace_id
    assert child_names(spans, root) == list(STAGES)
    # the caller's context is current again afterwards: a later predict is its own trace
    model.predict(image(1), imgsz=IMGSZ, verbose=False)
    later = image_spans(telemetry.spans())[-1]
    assert later.parent is None and later.context.trace_id != caller_context.trace_id


def test_a_batch_gets_a_batch_span_linked_to_every_image_span(telemetry: Telemetry) -> None:
    model = telemetry.instrument(yolo())
    results = model.predict([image(0), image(1), image(2)], imgsz=IMGSZ, conf=CONF, verbose=False)
    assert len(results) == 3

    spans = telemetry.spans()
    [batch] = [s for s in spans if s.name == "predict batch yolov8n"]
    images = image_spans(spans)
    assert len(images) == 3
    assert batch.attributes["visiontel.batch.size"] == 3
    assert all(s.attributes["visiontel.batch.size"] == 3 for s in images)

    linked = {link.context.span_id for link in batch.links}
    assert linked == {s.context.span_id for s in images}
    assert {link.context.trace_id for link in batch.links} == {s.context.trace_id for s in images}
    # every image a trace of its own, none of them the batch's
    traces = [s.context.trace_id for s in images]
    assert len(set(traces)) == 3
    assert batch.context.trace_id not in traces
    assert all(s.parent is None for s in [batch, *images])

    # the stages run once per batch: below the batch span, not below any image
    assert child_names(spans, batch) == list(STAGES)
    assert all(children(spans, s) == [] for s in images)
    [inference] = [s for s in children(spans, batch) if s.name == "inference"]
    assert [s.name for s in children(spans, inference)] == ["inference yolov8n"]
    for span, result in zip(images, results):
        assert span.attributes["visiontel.detections"] == len(result.boxes)
