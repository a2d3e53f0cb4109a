"""A three-process vision pipeline instrumented with the OpenTelemetry SDK and
visiontel-propagation, exporting OTLP to a collector: decoder -> detector -> tracker.

Each stage runs in its own process (multiprocessing, spawn) with its own service.name;
frames travel between them as plain dicts carrying the trace context and the frame
identity (visiontel.propagation.inject_dict / extract_dict).
"""

from __future__ import annotations

import logging
import multiprocessing
import random
import time
from typing import Any

CAMERA_URL = "rtsp://operator:Cam3raPa55@10.9.8.7:554/live"
MODEL = {"visiontel.model.name": "e2e-yolo", "visiontel.model.version": "v3"}


def _providers(service: str, endpoint: str) -> tuple[Any, Any, Any]:
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create(
        {
            "service.name": service,
            "service.instance.id": f"{service}-1",
            "visiontel.camera.url": CAMERA_URL,
        }
    )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, insecure=True), schedule_delay_millis=200
        )
    )
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=[
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=endpoint, insecure=True), export_interval_millis=500
            )
        ],
    )
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(
            OTLPLogExporter(endpoint=endpoint, insecure=True), schedule_delay_millis=200
        )
    )
    handler = LoggingHandler(level=logging.INFO, logger_provider=logger_provider)
    logging.getLogger("e2e").addHandler(handler)
    logging.getLogger("e2e").setLevel(logging.INFO)
    return tracer_provider, meter_provider, logger_provider


def _shutdown(*providers: Any) -> None:
    for provider in providers:
        provider.force_flush()
        provider.shutdown()


def decoder(endpoint: str, out: Any, ids: Any, frames: int) -> None:
    from visiontel.propagation import FrameIdentity, inject_dict, start_frame

    tracer_provider, meter_provider, logger_provider = _providers("e2e-decoder", endpoint)
    tracer = tracer_provider.get_tracer("e2e.decoder")
    for sequence in range(frames):
        frame = FrameIdentity.now("camera-1", sequence)
        with start_frame(
            "decode", frame, tracer=tracer, attributes={"visiontel.camera.url": CAMERA_URL}
        ) as span:
            time.sleep(0.002)  # simulated decode work (span duration), not synchronisation
            carrier: dict[str, Any] = {"pixels": b"\x00" * 16}
            inject_dict(carrier)
            ids.put(format(span.get_span_context().trace_id, "032x"))
        out.put(carrier)
    out.put(None)
    _shutdown(tracer_provider, meter_provider, logger_provider)


def detector(endpoint: str, inbox: Any, out: Any) -> None:
    from visiontel.propagation import continue_frame, extract_dict, inject_dict

    tracer_provider, meter_provider, logger_provider = _providers("e2e-detector", endpoint)
    tracer = tracer_provider.get_tracer("e2e.detector")
    meter = meter_provider.get_meter("visiontel.torch")
    duration = meter.create_histogram("visiontel.inference.duration", "s")
    images = meter.create_counter("visiontel.inference.images", "{image}")
    detections = meter.create_histogram("visiontel.inference.detections", "{detection}")
    log = logging.getLogger("e2e")
    while (carrier := inbox.get()) is not None:
        with continue_frame("detect", extract_dict(carrier), tracer=tracer, attributes=MODEL):
            started = time.perf_counter()
            time.sleep(0.005)  # simulated inference, measured below; nothing is waited for
            found = random.randint(1, 5)
            elapsed = time.perf_counter() - started
            duration.record(elapsed, {**MODEL, "visiontel.stage": "inference"})
            images.add(1, MODEL)
            detections.record(found, MODEL)
            log.info("detected %d objects from %s", found, CAMERA_URL)
            forward: dict[str, Any] = {"boxes": found}
            inject_dict(forward)
        out.put(forward)
    out.put(None)
    _shutdown(tracer_provider, meter_provider, logger_provider)


def tracker(endpoint: str, inbox: Any) -> None:
    from visiontel.propagation import FrameLatency, continue_frame, extract_dict

    tracer_provider, meter_provider, logger_provider = _providers("e2e-tracker", endpoint)
    tracer = tracer_provider.get_tracer("e2e.tracker")
    latency = FrameLatency(meter_provider)
    while (carrier := inbox.get()) is not None:
        context = extract_dict(carrier)
        with continue_frame("track", context, tracer=tracer):
            time.sleep(0.001)  # simulated tracking work (span duration), not synchronisation
            latency.record(context)
    _shutdown(tracer_provider, meter_provider, logger_provider)


def run_pipeline(endpoint: str, frames: int, timeout: float = 60.0) -> list[str]:
    """Run the three processes to completion; return the trace id of every frame."""
    ctx = multiprocessing.get_context("spawn")
    to_detector, to_tracker, ids = ctx.Queue(), ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(target=decoder, args=(endpoint, to_detector, ids, frames)),
        ctx.Process(target=detector, args=(endpoint, to_detector, to_tracker)),
        ctx.Process(target=tracker, args=(endpoint, to_tracker)),
    ]
    for proc in procs:
        proc.start()
    trace_ids = [ids.get(timeout=timeout) for _ in range(frames)]
    for proc in procs:
        proc.join(timeout)
        assert proc.exitcode == 0, f"{proc.name} exited with {proc.exitcode}"
    return trace_ids
