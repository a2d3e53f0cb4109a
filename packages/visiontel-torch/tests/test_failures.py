from __future__ import annotations

import logging

import pytest
import torch
from opentelemetry.trace import StatusCode

import visiontel.torch as vt
from visiontel.torch import _safety

from torch_support import Failing, Telemetry, TinyDetector


def test_exception_in_forward_marks_spans_and_propagates_unchanged(telemetry: Telemetry) -> None:
    error = ValueError("bad frame")
    model = telemetry.instrument(Failing(error), name="f", granularity="layer")
    with pytest.raises(ValueError) as raised:
        model(torch.randn(2, 4))
    assert raised.value is error
    spans = telemetry.by_name()
    root = spans["inference f"][0]
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes["error.type"] == "ValueError"
    (event,) = [e for e in root.events if e.name == "exception"]
    assert event.attributes["exception.message"] == "bad frame"
    # the raising layer and the one before it are both closed (always_call post-hooks)
    assert {"ok", "bad"} <= set(spans)
    assert spans["bad"][0].end_time <= root.end_time
    (point,) = telemetry.metric_points("visiontel.inference.duration")
    assert point.attributes["error.type"] == "ValueError"
    assert telemetry.metric_points("visiontel.inference.images") == []


def test_out_of_memory_records_memory_context(telemetry: Telemetry) -> None:
    error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    model = telemetry.instrument(Failing(error), name="oom")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        model(torch.randn(3, 4))
    root = telemetry.by_name()["inference oom"][0]
    assert root.attributes["visiontel.error.out_of_memory"] is True
    assert root.attributes["visiontel.batch.shape"] == "3x4"
    assert root.attributes["error.type"] == "OutOfMemoryError"
    # allocator counters only exist on a CUDA device: on CPU they are absent, never faked
    assert "visiontel.gpu.memory.allocated" not in root.attributes


def test_forward_recovers_after_a_failure(telemetry: Telemetry) -> None:
    model = telemetry.instrument(Failing(RuntimeError("once")), granularity="layer")
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 4))
    model.bad = torch.nn.Identity()
    telemetry.instrument(model, granularity="layer")
    model(torch.randn(1, 4))
    roots = [s for s in telemetry.spans() if s.parent is None]
    assert [r.status.status_code for r in roots] == [StatusCode.ERROR, StatusCode.UNSET]


def test_internal_error_is_logged_once_and_swallowed(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_counter(output: object) -> list[int]:
        raise KeyError("our extractor is broken")

    model = TinyDetector()
    reference = model(torch.randn(1, 3, 8, 8))
    telemetry.instrument(model, detections=broken_counter)
    before = _safety.internal_error_count()
    with caplog.at_level(logging.ERROR, logger="visiontel.torch"):
        for _ in range(3):
            out = model(torch.randn(1, 3, 8, 8))
    assert len(out) == len(reference)
    assert _safety.internal_error_count() - before == 3
    records = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert len(records) == 1
    assert "root post-hook" in records[0].getMessage()


def test_tracer_that_raises_never_reaches_the_model(caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    class ExplodingProvider(TracerProvider):
        def get_tracer(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def, override]
            tracer = super().get_tracer(*args, **kwargs)  # type: ignore[arg-type]

            def start_span(*a: object, **k: object) -> None:
                raise RuntimeError("exporter misconfigured")

            tracer.start_span = start_span  # type: ignore[method-assign, assignment]
            return tracer

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    expected = model(torch.ones(1, 4))
    vt.instrument_model(model, tracer_provider=ExplodingProvider(), granularity="layer")
    try:
        with caplog.at_level(logging.ERROR, logger="visiontel.torch"):
            assert torch.equal(model(torch.ones(1, 4)), expected)
            assert torch.equal(model(torch.ones(1, 4)), expected)
        assert sum("internal error" in r.getMessage() for r in caplog.records) == 1
    finally:
        vt.uninstrument_model(model)


@pytest.mark.parametrize("batched", [False, True], ids=["simple", "batch processor"])
def test_an_unsampled_failure_still_counts_with_its_error_type(batched: bool) -> None:
    """A forward the sampler drops keeps only its first input: a failure (out of memory
    here, which reads the input's device) still gives the duration point its error type."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider(sampler=ALWAYS_OFF)
    # all processors batched: the end of a forward may wait as later work
    processor = BatchSpanProcessor if batched else SimpleSpanProcessor
    tracer_provider.add_span_processor(processor(exporter))
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry = Telemetry(tracer_provider, meter_provider, exporter, reader)
    errors = _safety.internal_error_count()
    error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    model = telemetry.instrument(Failing(error), name="oom")
    try:
        with pytest.raises(torch.cuda.OutOfMemoryError):
            model(torch.randn(3, 4))
        model.bad = torch.nn.Identity()
        model(torch.randn(3, 4))
        assert vt.flush(10.0)
        points = telemetry.metric_points("visiontel.inference.duration")
        assert sorted(p.attributes.get("error.type", "") for p in points) == [
            "",
            "OutOfMemoryError",
        ]
        (images,) = telemetry.metric_points("visiontel.inference.images")
        assert images.value == 3  # the successful forward's batch only
        assert telemetry.spans() == []
        assert _safety.internal_error_count() == errors
    finally:
        vt.uninstrument_model(model)
        telemetry.tracer_provider.shutdown()
