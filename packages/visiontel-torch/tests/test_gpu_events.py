"""The resolver's side of the CUDA-event path, driven by a scripted event source.

The resolver's pairing, polling and timeout code under test is the production code; the
event source here is a script, so these tests say nothing about ``CudaEventSource`` or
about which thread waits: test_cuda_events.py drives the real source, its choice by device
and the resolver against a recording stand-in for ``torch.cuda`` (and a real GPU when
there is one).
"""

from __future__ import annotations

import threading

import pytest
import torch

from visiontel.torch import _model, _runtime

from torch_support import Telemetry, TinyDetector


class ScriptedEvent:
    def __init__(self, device_ms: float) -> None:
        self.device_ms = device_ms
        self.done = False
        self.recorded = 0

    def record(self) -> None:
        self.recorded += 1

    def query(self) -> bool:
        return self.done

    def elapsed_time(self, end_event: ScriptedEvent) -> float:
        assert self.done and end_event.done, "elapsed_time read before completion"
        return end_event.device_ms - self.device_ms


class ScriptedSource:
    """Each event completes 2 ms of device time after the previous one."""

    def __init__(self, gpu_epoch_ns: int = 0) -> None:
        self.events: list[ScriptedEvent] = []
        self.released: list[ScriptedEvent] = []
        self.gpu_epoch_ns = gpu_epoch_ns
        self.lock = threading.Lock()

    def acquire(self) -> ScriptedEvent | None:
        with self.lock:
            event = ScriptedEvent(2.0 * len(self.events))
            self.events.append(event)
        event.record()
        return event

    def release(self, events: list[ScriptedEvent]) -> None:
        self.released.extend(events)

    def wall_clock_ns(self, event: ScriptedEvent) -> int | None:
        return self.gpu_epoch_ns + int(event.device_ms * 1e6) if self.gpu_epoch_ns else None

    def complete_all(self) -> None:
        for event in self.events:
            event.done = True


def test_spans_wait_for_events_without_blocking_the_forward(telemetry: Telemetry) -> None:
    source = ScriptedSource()
    model = telemetry.instrument(TinyDetector(), name="gpu", _event_source=source)
    model(torch.randn(1, 3, 8, 8))  # returns although no event has completed
    # root start/end + one pre/post pair for each of backbone, neck, head
    assert len(source.events) == 8
    assert all(e.recorded == 1 for e in source.events)
    runtime = _runtime.runtime_for(telemetry.tracer_provider, telemetry.meter_provider)
    assert not runtime.resolver.flush(0.05)
    assert telemetry.exporter.get_finished_spans() == ()
    source.complete_all()
    spans = telemetry.by_name()
    for name in ("backbone", "neck", "head"):
        assert spans[name][0].attributes["visiontel.gpu.duration"] == pytest.approx(0.002)
    root = spans["inference gpu"][0]
    # root start event is the first acquired, end event the last: 7 intervals of 2 ms
    assert root.attributes["visiontel.gpu.duration"] == pytest.approx(0.014)
    assert sorted(map(id, source.released)) == sorted(map(id, source.events))


def test_gpu_start_delay_uses_the_calibrated_clock(telemetry: Telemetry) -> None:
    model = TinyDetector()
    probe = ScriptedSource()
    telemetry.instrument(model, name="cal", granularity="model", _event_source=probe)
    model(torch.randn(1, 3, 8, 8))
    probe.complete_all()
    host_start = telemetry.spans()[0].start_time
    telemetry.exporter.clear()
    source = ScriptedSource(gpu_epoch_ns=host_start + 5_000_000_000)
    telemetry.instrument(model, name="cal", granularity="model", _event_source=source)
    model(torch.randn(1, 3, 8, 8))
    source.complete_all()
    (root,) = telemetry.spans()
    delay = root.attributes["visiontel.gpu.start_delay"]
    expected = (host_start + 5_000_000_000 - root.start_time) / 1e9
    assert delay == pytest.approx(expected, abs=1e-6)


def test_events_that_never_complete_time_out(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VISIONTEL_TORCH_GPU_TIMEOUT", "0.05")
    source = ScriptedSource()
    model = telemetry.instrument(TinyDetector(), name="stuck", _event_source=source)
    runtime = _runtime.runtime_for(telemetry.tracer_provider, telemetry.meter_provider)
    timeouts_before = runtime.resolver.gpu_timeouts
    model(torch.randn(1, 3, 8, 8))
    spans = telemetry.by_name()
    assert runtime.resolver.gpu_timeouts == timeouts_before + 1
    root = spans["inference stuck"][0]
    assert "visiontel.gpu.duration" not in root.attributes
    assert {"backbone", "neck", "head"} <= set(spans)


def test_flush_timeout_bounds_the_wait_over_every_resolver(telemetry: Telemetry) -> None:
    """Two runtimes, each with a forward whose events are not done: ``flush(timeout)``
    gives up after ``timeout`` in all, not after ``timeout`` per resolver."""
    import time

    import visiontel.torch as vt

    from torch_support import make_telemetry

    other = make_telemetry()
    sources = [ScriptedSource(), ScriptedSource()]
    for owner, source in zip((telemetry, other), sources):
        model = owner.instrument(TinyDetector(), name="gpu", _event_source=source)
        model(torch.randn(1, 3, 8, 8))
    started = time.monotonic()
    assert not vt.flush(0.5)
    assert time.monotonic() - started < 0.9  # one timeout per resolver would be 1.0 s
    for source in sources:
        source.complete_all()
    assert vt.flush(10.0)
    for owner in (telemetry, other):
        assert [s.name for s in owner.exporter.get_finished_spans()].count("inference gpu") == 1


def test_flush_makes_no_runtime() -> None:
    import visiontel.torch as vt

    _runtime.set_default_runtime(None)
    before = _runtime.all_runtimes()
    assert vt.flush(1.0)
    assert _runtime.all_runtimes() == before


def test_flush_reaches_a_runtime_no_longer_listed_while_a_model_uses_it() -> None:
    """A model whose runtime was pushed out of the list (more provider pairs than
    ``_MAX_RUNTIMES``) or whose default runtime was replaced: its queued work is still
    finished by ``flush``."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import visiontel.torch as vt

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))  # batched: ends as later work
    model = vt.instrument_model(TinyDetector(), name="pushed-out", tracer_provider=provider)
    others = [TracerProvider() for _ in range(_runtime._MAX_RUNTIMES)]
    for other in others:
        _runtime.runtime_for(other, None)
    mine = _runtime.runtime_for(provider, None)
    with torch.no_grad():
        model(torch.randn(1, 3, 8, 8))
    instrumentation = _model.instrumentation_of(model)
    assert instrumentation is not None and instrumentation._runtime is not mine
    assert instrumentation._runtime in _runtime.all_runtimes()
    assert vt.flush(10.0) and provider.force_flush()
    assert [s.name for s in exporter.get_finished_spans()].count("inference pushed-out") == 1
    vt.uninstrument_model(model)
