"""The real ``CudaEventSource``, its choice by input device, and the resolver consuming it.

Each test runs twice: against a strict recording stand-in for ``torch.cuda`` (any machine)
and against the real ``torch.cuda.Event`` with recorders around every wait (skipped
without a GPU). ``cuda_standin.py`` says what is replaced and why. The rule checked
throughout: the forward (caller's) thread only enqueues events; every ``query``,
``elapsed_time`` and ``synchronize`` runs on the resolver thread.
"""

from __future__ import annotations

import threading
from typing import Any, TypeVar

import pytest
import torch
from cuda_standin import (
    RealCuda,
    ReportsDefaultCuda,
    StandInGpu,
    assert_forward_thread_never_waits,
)

from visiontel.torch import TorchInstrumentor, _timing
from visiontel.torch._timing import CudaEventSource

from torch_support import Telemetry, TinyDetector

# Record order of TinyDetector's timing events at stage granularity: the root's start, then
# a start/end pair for each stage. A span's GPU start is its start event's completion.
START_EVENT = {"inference cal": 0, "backbone": 1, "neck": 3, "head": 5}
B = TypeVar("B", StandInGpu, RealCuda)


def _has_gpu_times(attributes: Any) -> bool:
    return all(k in attributes for k in ("visiontel.gpu.duration", "visiontel.gpu.start_delay"))


def test_the_device_the_inputs_report_chooses_the_event_source(
    gpu: StandInGpu | RealCuda, telemetry: Telemetry
) -> None:
    instrumentor = TorchInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    try:
        model = TinyDetector()
        images = torch.randn(1, 3, 8, 8)
        model(images)  # discovered here, on CPU inputs: no event source at all
        (cpu_root,) = telemetry.by_name()["inference TinyDetector"]
        assert _timing._cuda_sources == {}
        assert gpu.log.calls("Event.record") == []
        assert not any("visiontel.gpu" in key for key in cpu_root.attributes or {})
        telemetry.exporter.clear()
        model, images = gpu.on_device(model, images)
        model(images)
        gpu.finish()
        spans = telemetry.by_name()
    finally:
        instrumentor.uninstrument()
    assert list(_timing._cuda_sources) == [0]
    assert type(_timing._cuda_sources[0]) is CudaEventSource
    root = spans["inference TinyDetector"][0]
    assert root.attributes["visiontel.input.device"] == "cuda:0"
    for name in ("inference TinyDetector", "backbone", "neck", "head"):
        assert _has_gpu_times(spans[name][0].attributes), name
    assert len(gpu.log.events(calibration=False)) == 8
    assert_forward_thread_never_waits(gpu.log, threading.get_ident())


def test_events_return_to_the_pool_and_are_reused(
    gpu: StandInGpu | RealCuda, telemetry: Telemetry
) -> None:
    model, images = gpu.on_device(TinyDetector(), torch.randn(1, 3, 8, 8))
    telemetry.instrument(model, name="pool")
    model(images)
    gpu.finish()
    assert len(telemetry.spans()) == 4
    first = {id(event) for event in gpu.log.events(calibration=False)}
    assert len(first) == 8
    records = len(gpu.log.calls("Event.record"))
    telemetry.exporter.clear()
    model(images)
    gpu.finish()
    assert all(_has_gpu_times(span.attributes) for span in telemetry.spans())
    # eight more records, all on the eight events released after the first forward
    assert len(gpu.log.calls("Event.record")) == records + 8
    assert {id(event) for event in gpu.log.events(calibration=False)} == first
    assert_forward_thread_never_waits(gpu.log, threading.get_ident())


def test_an_exhausted_pool_skips_gpu_time_only(
    gpu: StandInGpu | RealCuda, telemetry: Telemetry
) -> None:
    source = CudaEventSource(0, capacity=3)
    model, images = gpu.on_device(TinyDetector(), torch.randn(1, 3, 8, 8))
    telemetry.instrument(model, name="small", _event_source=source)
    model(images)  # the root's start and backbone's pair get the three events
    gpu.finish()
    spans = telemetry.by_name()
    assert set(spans) == {"inference small", "backbone", "neck", "head"}
    assert _has_gpu_times(spans["backbone"][0].attributes)
    for name in ("neck", "head", "inference small"):
        assert "visiontel.gpu.duration" not in spans[name][0].attributes, name
    used = gpu.log.events(calibration=False)
    assert len(used) == 3
    again = [source.acquire() for _ in range(4)]
    assert again[3] is None  # still at capacity: no fourth event is made
    assert {id(event) for event in again[:3]} == {id(event) for event in used}
    assert_forward_thread_never_waits(gpu.log, threading.get_ident())


def test_calibration_waits_on_the_resolver_thread_and_maps_device_time_to_wall_clock(
    gpu: StandInGpu | RealCuda, telemetry: Telemetry
) -> None:
    model, images = gpu.on_device(TinyDetector(), torch.randn(1, 3, 8, 8))
    telemetry.instrument(model, name="cal")
    model(images)
    completed = gpu.finish()
    spans = {span.name: span for span in telemetry.spans()}
    assert set(spans) == set(START_EVENT)
    (reference,) = gpu.log.events(calibration=True)
    (wait,) = gpu.log.calls("Event.synchronize")
    assert wait.target is reference
    assert_forward_thread_never_waits(gpu.log, threading.get_ident())
    for name, span in spans.items():
        delay = span.attributes["visiontel.gpu.start_delay"]
        if isinstance(gpu, StandInGpu):  # exact: the scripted clocks are the truth
            truth_ns = completed[START_EVENT[name]].completed[1]
            assert delay == pytest.approx((truth_ns - span.start_time) / 1e9, abs=1e-9), name
            expected = 0.014 if name == "inference cal" else 0.002
            assert span.attributes["visiontel.gpu.duration"] == pytest.approx(expected), name
        else:  # an event completes after the host enqueued it; 1 ms for calibration error
            assert delay > -1e-3, name
            assert span.attributes["visiontel.gpu.duration"] >= 0, name


def test_recalibration_follows_the_clocks_after_recalibrate_s(
    standin: StandInGpu, telemetry: Telemetry
) -> None:
    model, images = standin.on_device(TinyDetector(), torch.randn(1, 3, 8, 8))
    telemetry.instrument(model, name="drift", granularity="model")

    def delay_and_truth() -> tuple[float, float]:
        model(images)
        start, _end = standin.finish()
        (root,) = telemetry.spans()
        telemetry.exporter.clear()
        truth = (start.completed[1] - root.start_time) / 1e9
        return root.attributes["visiontel.gpu.start_delay"], truth

    delay, truth = delay_and_truth()
    assert delay == pytest.approx(truth, abs=1e-9)
    with standin.lock:
        standin.wall_zero_ns += 5_000_000  # the host clock steps 5 ms against the device
        standin.monotonic_s += 9.0  # within recalibrate_s (10 s): the reference still holds
    delay, truth = delay_and_truth()
    assert delay == pytest.approx(truth - 0.005, abs=1e-9)
    assert len(standin.log.events(calibration=True)) == 1
    with standin.lock:
        standin.monotonic_s += 1.5  # 10.5 s since the calibration
    delay, truth = delay_and_truth()
    assert delay == pytest.approx(truth, abs=1e-9)
    assert len(standin.log.events(calibration=True)) == 2
    assert len(standin.log.calls("Stream()")) == 1  # the private stream is made once
    assert_forward_thread_never_waits(standin.log, threading.get_ident())


def test_a_cuda_device_without_an_index_means_the_current_device(
    standin: StandInGpu, telemetry: Telemetry
) -> None:
    standin.current_device = 1
    model = telemetry.instrument(TinyDetector(), name="dev", granularity="model")
    model(torch.randn(1, 3, 8, 8).as_subclass(ReportsDefaultCuda))
    standin.finish()
    (root,) = telemetry.spans()
    assert list(_timing._cuda_sources) == [1]
    (stream,) = standin.log.calls("Stream()")
    assert stream.target.device == torch.device("cuda", 1)  # calibrated on that device
    assert _has_gpu_times(root.attributes)


def test_a_wait_on_the_forward_thread_is_caught(
    gpu: StandInGpu | RealCuda, telemetry: Telemetry
) -> None:
    """The check the tests above rely on can fail: a forward that waits trips it."""

    class Waits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.conv(x)
            torch.cuda.synchronize()
            return out  # type: ignore[no-any-return]

    model, images = gpu.on_device(Waits(), torch.randn(1, 3, 8, 8))
    telemetry.instrument(model, name="waits")
    model(images)
    gpu.finish()
    assert len(telemetry.spans()) == 2
    with pytest.raises(AssertionError, match="synchronize on the forward"):
        assert_forward_thread_never_waits(gpu.log, threading.get_ident())


def test_the_stand_in_refuses_what_it_does_not_model(standin: StandInGpu) -> None:
    with pytest.raises(AssertionError, match="not modelled"):
        torch.cuda.memory_allocated(0)
    (violation,) = standin.log.violations
    assert violation.startswith("StandInCuda.memory_allocated")
    standin.log.violations.clear()  # expected here; in any other test it fails the test
