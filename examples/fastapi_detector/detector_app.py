"""A FastAPI object detector traced from the HTTP request to each stage of the model.

* ``opentelemetry-instrument`` configures the SDK from the environment and instruments
  FastAPI (one server span per request).
* ``visiontel.torch`` traces each forward: ``inference ssdlite`` with one span per stage
  (``transform``, ``backbone``, ``head``...) under the request's server span.
* ``OTEL_TRACES_SAMPLER=visiontel_force_trace`` with
  ``OTEL_PROPAGATORS=tracecontext,baggage,visiontel_force_trace``: a request sent with
  ``visiontel-force-trace: 1`` is traced whatever ``OTEL_TRACES_SAMPLER_ARG`` says.
* Every response, an error included, carries ``traceresponse: 00-<trace id>-<span id>-<flags>``.

The detector is torchvision's SSDlite320 built from its config with random weights, so the
boxes are noise: the point is the telemetry, not the detections.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from fastapi import FastAPI, HTTPException, Request
from opentelemetry.instrumentation.propagators import (
    TraceResponsePropagator,
    set_global_response_propagator,
)
from starlette.concurrency import run_in_threadpool

import visiontel.torch as vt

MODEL_NAME = "ssdlite"
MAX_IMAGE_BYTES = 8 * 1024 * 1024
SCORE_THRESHOLD = 0.5


def build_detector() -> torch.nn.Module:
    """SSDlite320 (MobileNetV3), random weights, traced by visiontel.torch per stage."""
    torch.manual_seed(0)
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None
    )
    model.eval()
    return vt.instrument_model(model, name=MODEL_NAME, granularity="stage")


def create_app() -> FastAPI:
    detector = build_detector()
    # The OpenTelemetry ASGI middleware (under FastAPI's instrumentation) writes
    # `traceresponse` on every response it sends, 4xx and 5xx included, with the server
    # span's ids, sampled or not.
    set_global_response_propagator(TraceResponsePropagator())
    app = FastAPI(title="visiontel FastAPI detector example")

    def infer(data: bytes) -> list[dict[str, Any]]:
        if not data:
            raise HTTPException(400, "send a JPEG or PNG image as the request body")
        try:
            image = torchvision.io.decode_image(
                torch.frombuffer(bytearray(data), dtype=torch.uint8),
                mode=torchvision.io.ImageReadMode.RGB,
            )
        except RuntimeError as exc:
            raise HTTPException(400, f"not a JPEG or PNG image: {exc}") from None
        with torch.inference_mode():
            (out,) = detector([image.float() / 255.0])
        keep = out["scores"] >= SCORE_THRESHOLD
        return [
            {"box": box.tolist(), "label": int(label), "score": round(float(score), 3)}
            for box, label, score in zip(
                out["boxes"][keep], out["labels"][keep], out["scores"][keep], strict=True
            )
        ]

    @app.post("/detect")
    async def detect(request: Request) -> dict[str, Any]:
        data = await request.body()
        if len(data) > MAX_IMAGE_BYTES:
            raise HTTPException(413, f"images up to {MAX_IMAGE_BYTES} bytes")
        # The forward runs in a worker thread; Starlette copies the request's context into
        # it, so the model's spans land under the server span.
        detections = await run_in_threadpool(infer, data)
        return {"model": MODEL_NAME, "detections": detections}

    return app


app = create_app()
