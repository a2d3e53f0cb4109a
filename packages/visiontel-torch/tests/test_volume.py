from __future__ import annotations

import logging
import time

import pytest
import torch
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import visiontel.torch as vt

from torch_support import TinyDetector


def test_warns_once_when_the_batch_processor_cannot_keep_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = TracerProvider()
    # a small queue that is exported rarely: layer spans will overflow it
    provider.add_span_processor(
        BatchSpanProcessor(
            InMemorySpanExporter(),
            max_queue_size=64,
            max_export_batch_size=64,
            schedule_delay_millis=60_000,
        )
    )
    model = vt.instrument_model(
        TinyDetector(),
        granularity="layer",
        tracer_provider=provider,
        meter_provider=MeterProvider(),
    )
    try:
        with caplog.at_level(logging.WARNING, logger="visiontel.torch"):
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                model(torch.randn(1, 3, 8, 8))
        warnings = [r.getMessage() for r in caplog.records if "spans/s" in r.getMessage()]
        assert len(warnings) == 1
        assert "OTEL_BSP_MAX_QUEUE_SIZE=" in warnings[0]
        assert "queue (64)" in warnings[0]
    finally:
        vt.uninstrument_model(model)
        provider.shutdown()


def test_no_warning_when_the_queue_has_room(caplog: pytest.LogCaptureFixture) -> None:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter(), max_queue_size=100_000))
    model = vt.instrument_model(
        TinyDetector(),
        granularity="stage",
        tracer_provider=provider,
        meter_provider=MeterProvider(),
    )
    try:
        with caplog.at_level(logging.WARNING, logger="visiontel.torch"):
            deadline = time.monotonic() + 1.2
            while time.monotonic() < deadline:
                model(torch.randn(1, 3, 8, 8))
                time.sleep(0.01)
        assert not [r for r in caplog.records if "spans/s" in r.getMessage()]
    finally:
        vt.uninstrument_model(model)
        provider.shutdown()
