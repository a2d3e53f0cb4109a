"""Torch's CUDA surface, replaced by a recording stand-in (CPU) or wrapped by recorders (GPU).

The code under test is the production code: ``CudaEventSource``, the choice of an event
source by input device (``_model._events_for``) and the resolver that consumes the events.
Only what torch provides is swapped: on a machine without CUDA, ``torch.cuda`` (the
attribute of the ``torch`` module, which ``_timing`` reads on every call) becomes
``StandInCuda`` and ``_timing``'s clock becomes ``StandInClock``; on a GPU the real
``torch.cuda.Event`` / ``Stream`` methods and ``torch.cuda.synchronize`` are wrapped. Both
write the same ``CallLog``: which thread called ``record``, ``query``, ``elapsed_time`` and
every ``synchronize``, so ``assert_forward_thread_never_waits`` can fail.

The stand-in is strict: an attribute it does not model records a violation and raises.
Hooks swallow their own exceptions (_safety.py), so the ``gpu`` fixture also fails a test
on any violation or internal error: nothing the stand-in lacks can pass silently.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from visiontel.torch import _timing

RESOLVER_THREAD = "visiontel-torch-resolver"
SYNCHRONIZE = ("Event.synchronize", "Stream.synchronize", "cuda.synchronize")


@dataclass(frozen=True)
class Call:
    what: str
    target: Any  # the event or stream called; holding it keeps identities distinct
    thread: int | None
    thread_name: str
    stream: Any = None  # Event.record's argument: None means the caller's current stream


class CallLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # the forward and resolver threads both write
        self._calls: list[Call] = []
        self.violations: list[str] = []

    def add(self, what: str, target: Any = None, stream: Any = None) -> None:
        thread = threading.current_thread()
        with self._lock:
            self._calls.append(Call(what, target, thread.ident, thread.name, stream))

    def violation(self, message: str) -> None:
        with self._lock:
            self.violations.append(message)

    def calls(self, *what: str) -> list[Call]:
        with self._lock:
            return [call for call in self._calls if call.what in what]

    def events(self, calibration: bool) -> list[Any]:
        """Distinct events recorded on the caller's stream (timing) or on a private one."""
        seen: dict[int, Any] = {}
        for call in self.calls("Event.record"):
            if (call.stream is not None) is calibration:
                seen.setdefault(id(call.target), call.target)
        return list(seen.values())


def assert_forward_thread_never_waits(log: CallLog, forward_thread: int | None) -> None:
    """The rule under test: the forward thread only enqueues; every wait is the resolver's."""
    waits = log.calls(*SYNCHRONIZE)
    on_forward = [call.what for call in waits if call.thread == forward_thread]
    assert not on_forward, f"synchronize on the forward (caller's) thread: {on_forward}"
    for call in [*waits, *log.calls("Event.query", "Event.elapsed_time")]:
        assert call.thread_name == RESOLVER_THREAD, f"{call.what} ran on {call.thread_name}"
    for call in log.calls("Event.record"):
        if call.stream is None:  # a timing event: enqueued by the forward itself
            assert call.thread == forward_thread, f"timing event recorded on {call.thread_name}"
        else:  # the calibration's reference event
            assert call.thread_name == RESOLVER_THREAD, f"calibration on {call.thread_name}"


class ReportsCuda(torch.Tensor):
    """A CPU tensor whose ``device`` says ``cuda:0``: what the event-source choice reads.

    ``_events_for`` picks CUDA timing from the device the inputs report
    (``describe_inputs`` -> ``first.is_cuda``, then ``first.device``); without a GPU no
    tensor can really be on CUDA, so this is the narrowest seam that lets the real choice
    run. ``__torch_function__`` is disabled, so the first layer returns a plain CPU tensor
    and the forward runs as usual.
    """

    __torch_function__ = torch._C._disabled_torch_function_impl
    reported = torch.device("cuda", 0)

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.reported

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return self.reported.type == "cuda"  # read first, as on a real CUDA tensor


class ReportsDefaultCuda(ReportsCuda):
    reported = torch.device("cuda")  # no index: the current device is asked


class _Strict:
    """Any attribute the stand-in does not model is a violation, and raises."""

    __slots__ = ()
    _log: CallLog

    def __getattr__(self, name: str) -> Any:
        if name == "_log":  # not set yet: without this, the lookup below would recurse
            raise AttributeError(name)
        message = f"{type(self).__name__}.{name} is not modelled by the stand-in"
        self._log.violation(message)
        raise AssertionError(message)


class StandInGpu:
    """One simulated device: its clock, the work queued on it and the calls made to it.

    The truth the tests check against: the host wall clock reads
    ``wall_zero_ns + device_ms * 1e6``. Events recorded on the caller's stream complete only
    when the test calls ``finish`` (2 ms of device time apart, like queued kernels); an event
    recorded on a private stream completes at once (the stream is idle).
    """

    name = "stand-in"

    def __init__(self, wall_zero_ns: int, current_device: int = 0) -> None:
        self.log = CallLog()
        self.lock = threading.Lock()
        self.device_ms = 0.0
        self.wall_zero_ns = wall_zero_ns
        self.monotonic_s = 1000.0
        self.current_device = current_device
        self.pending: list[StandInEvent] = []
        self.cuda = StandInCuda(self)
        self.clock = StandInClock(self)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch, "cuda", self.cuda)
        monkeypatch.setattr(_timing, "time", self.clock)

    def on_device(self, model: Any, images: torch.Tensor) -> tuple[Any, torch.Tensor]:
        return model, images.as_subclass(ReportsCuda)

    def finish(self, step_ms: float = 2.0) -> list[StandInEvent]:
        """Run the queued work: each pending event completes ``step_ms`` after the previous."""
        with self.lock:
            done, self.pending = self.pending, []
            for event in done:
                self.device_ms += step_ms
                event.completed = (self.device_ms, self.wall_at(self.device_ms))
        return done

    def wall_at(self, device_ms: float) -> int:
        return self.wall_zero_ns + int(device_ms * 1e6)


class StandInEvent(_Strict):
    __slots__ = ("_gpu", "_log", "completed")

    def __init__(self, gpu: StandInGpu) -> None:
        self._gpu, self._log = gpu, gpu.log
        self.completed: tuple[float, int] | None = None  # (device ms, wall ns) once done

    def record(self, stream: StandInStream | None = None) -> None:
        self._log.add("Event.record", self, stream)
        gpu = self._gpu
        with gpu.lock:
            if stream is None:
                self.completed = None
                gpu.pending.append(self)
            else:
                self.completed = (gpu.device_ms, gpu.wall_at(gpu.device_ms))

    def query(self) -> bool:
        self._log.add("Event.query", self)
        with self._gpu.lock:
            return self.completed is not None or self not in self._gpu.pending

    def elapsed_time(self, end_event: StandInEvent) -> float:
        self._log.add("Event.elapsed_time", self)
        if self.completed is None or end_event.completed is None:
            self._log.violation("elapsed_time read before both events completed")
            raise RuntimeError("CUDA error: device not ready")  # what real CUDA raises
        return end_event.completed[0] - self.completed[0]

    def synchronize(self) -> None:
        self._log.add("Event.synchronize", self)
        if self.completed is None and self in self._gpu.pending:
            self._gpu.finish()  # a real wait returns once the queue up to the event has run


class StandInStream(_Strict):
    __slots__ = ("_log", "device")

    def __init__(self, gpu: StandInGpu, device: Any) -> None:
        self._log, self.device = gpu.log, device

    def synchronize(self) -> None:
        self._log.add("Stream.synchronize", self)


class StandInCuda(_Strict):
    """Stands in for the ``torch.cuda`` module: what visiontel may call, all recorded."""

    __slots__ = ("_gpu", "_log")

    def __init__(self, gpu: StandInGpu) -> None:
        self._gpu, self._log = gpu, gpu.log

    def Event(self, enable_timing: bool = False, **flags: bool) -> StandInEvent:
        if not enable_timing or any(flags.values()):
            self._log.violation(f"Event(enable_timing={enable_timing}, {flags}): not timing")
        return StandInEvent(self._gpu)

    def Stream(self, device: Any = None, priority: int = 0) -> StandInStream:
        stream = StandInStream(self._gpu, device)
        self._log.add("Stream()", stream)
        return stream

    @contextlib.contextmanager
    def stream(self, stream: StandInStream) -> Iterator[None]:
        self._log.add("cuda.stream", stream)
        yield

    def synchronize(self, device: Any = None) -> None:
        self._log.add("cuda.synchronize")

    def is_available(self) -> bool:
        return True

    def current_device(self) -> int:
        self._log.add("cuda.current_device")
        return self._gpu.current_device


class StandInClock(_Strict):
    """``_timing``'s ``time``: the host clocks, scripted to agree with the device clock."""

    __slots__ = ("_gpu", "_log")

    def __init__(self, gpu: StandInGpu) -> None:
        self._gpu, self._log = gpu, gpu.log

    def monotonic(self) -> float:
        return self._gpu.monotonic_s

    def time_ns(self) -> int:
        gpu = self._gpu
        with gpu.lock:
            return gpu.wall_at(gpu.device_ms)


class RealCuda:
    """A real device, with its event, stream and device waits wrapped by recorders."""

    name = "cuda"

    def __init__(self) -> None:
        self.log = CallLog()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        cuda = torch.cuda
        wrapped = {
            cuda.Event: ("record", "query", "elapsed_time", "synchronize"),
            cuda.Stream: ("synchronize",),
        }
        for cls, methods in wrapped.items():
            for method in methods:
                what = f"{cls.__name__}.{method}"
                monkeypatch.setattr(cls, method, self._recorder(what, getattr(cls, method)))
        synchronize, log = cuda.synchronize, self.log

        def recorded_synchronize(device: Any = None) -> None:
            log.add("cuda.synchronize")
            synchronize(device)

        monkeypatch.setattr(cuda, "synchronize", recorded_synchronize)

    def _recorder(self, what: str, original: Any) -> Any:
        log = self.log
        if what == "Event.record":

            def record(event: Any, stream: Any = None) -> Any:
                log.add(what, event, stream)
                return original(event, stream)

            return record

        def call(target: Any, *args: Any, **kwargs: Any) -> Any:
            log.add(what, target)
            return original(target, *args, **kwargs)

        return call

    def on_device(self, model: Any, images: torch.Tensor) -> tuple[Any, torch.Tensor]:
        return model.cuda(), images.cuda()

    def finish(self) -> list[Any]:
        return []  # a real device runs its queue by itself; the resolver polls query()
