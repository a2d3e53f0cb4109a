"""NVML faults on the simulator (visiontel.gpu.testing): a GPU lost mid-run, the driver
unloaded mid-run, every NVML call timing out. The application (a thread doing its own work
and collecting metrics as an exporter would) never sees an exception, collection degrades
(errors counted, the failed GPU's series go away or go stale) and comes back afterwards."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from reliability_support import PROFILE, metric_points

from visiontel.gpu import GPUInstrumentor
from visiontel.gpu.testing import DRIVER_NOT_LOADED, GPU_IS_LOST, TIMEOUT, NvmlSimulator

GiB = 1024**3
PHASE_S = 3.0 if PROFILE.name == "short" else 15.0
COLLECT_BOUND_S = 0.5  # one export's collect() must never wait on NVML
REFRESH_TIMEOUT_S = 1.0  # GPUInstrumentor.refresh's default
# refresh() waits for the sampler thread at most its timeout, then has to get the GIL and a
# CPU back: on the suite's 2 shared cores with the sampler, event and exporter threads
# runnable, that is what COLLECT_BOUND_S allows a path that makes no NVML call.
REFRESH_BOUND_S = REFRESH_TIMEOUT_S + COLLECT_BOUND_S
HUNG_CALL_MS = 400
HUNG_CALLS = (
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetFieldValues",
)


def healthy(used_gib: int) -> dict[str, object]:
    return {
        "device_count": 2,
        **NvmlSimulator.gpu(0),
        **NvmlSimulator.gpu(1),
        "gpu.0.memory.used": used_gib * GiB,
        "gpu.1.memory.used": used_gib * GiB,
    }


FAULTS: dict[str, dict[str, object]] = {
    "lost-gpu": {"gpu.1.error.all": GPU_IS_LOST},
    "driver-unloaded": {
        "init_error": DRIVER_NOT_LOADED,
        "gpu.0.error.all": DRIVER_NOT_LOADED,
        "gpu.1.error.all": DRIVER_NOT_LOADED,
    },
    "all-calls-time-out": {
        **{f"gpu.{i}.error.all": TIMEOUT for i in (0, 1)},
        **{f"gpu.{i}.delay.{fn}": HUNG_CALL_MS for i in (0, 1) for fn in HUNG_CALLS},
    },
}
FAULTED_GPUS = {"lost-gpu": (1,), "driver-unloaded": (0, 1), "all-calls-time-out": (0, 1)}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NvmlSimulator]:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.fail("the NVML simulator needs a C compiler (cc or gcc) on PATH")
    simulator = NvmlSimulator.build(tmp_path_factory.mktemp("nvml-sim"))
    mp = pytest.MonkeyPatch()
    for key, value in simulator.env().items():
        mp.setenv(key, value)
    yield simulator
    mp.undo()


class App:
    """The application's thread: its own work, plus what an exporter thread does each
    interval (collect) and an occasional explicit refresh(); every exception is kept."""

    def __init__(self, inst: GPUInstrumentor, reader: InMemoryMetricReader) -> None:
        self.inst, self.reader = inst, reader
        self.errors: list[BaseException] = []
        self.worst_collect = 0.0
        self.worst_refresh = 0.0
        self.refreshes = 0
        self.stale_refreshes = 0  # refresh() found no fresh sweep within its timeout
        self.iterations = 0
        self.latest: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="app", daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                sum(i * i for i in range(2000))  # the application's own work
                started = time.perf_counter()
                self.latest = metric_points(self.reader)
                self.worst_collect = max(self.worst_collect, time.perf_counter() - started)
                if self.iterations % 20 == 0:
                    started = time.perf_counter()
                    fresh = self.inst.refresh(timeout=REFRESH_TIMEOUT_S)
                    _ = self.inst.devices
                    self.worst_refresh = max(self.worst_refresh, time.perf_counter() - started)
                    self.refreshes += 1
                    self.stale_refreshes += not fresh
                self.iterations += 1
            except BaseException as exc:  # what the application would see
                self.errors.append(exc)
            time.sleep(0.02)


def memory(p: dict[str, list[tuple[dict[str, Any], Any]]], gpu: str) -> Any:
    return next((v for a, v in p.get("hw.gpu.memory.usage", []) if a.get("hw.id") == gpu), None)


def collection_errors(p: dict[str, list[tuple[dict[str, Any], Any]]]) -> float:
    return sum(v for _, v in p.get("visiontel.gpu.collection.errors", []))


def wait_for(condition: Any, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def test_nvml_lost_gpu_mid_run(sim, record):
    record("nvml-lost-gpu", **run_fault(sim, "lost-gpu"))


def test_nvml_driver_unloaded_mid_run(sim, record):
    record("nvml-driver-unloaded", **run_fault(sim, "driver-unloaded"))


def test_nvml_every_call_times_out(sim, record):
    record("nvml-all-calls-time-out", **run_fault(sim, "all-calls-time-out"))


def run_fault(sim: NvmlSimulator, fault: str) -> dict[str, str]:
    """Healthy, then `fault` for PHASE_S, then healthy with new values; asserts, and
    returns the row for docs/reliability.md."""
    sim.write(healthy(10))
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    inst = GPUInstrumentor()
    inst.instrument(meter_provider=provider, interval=0.05, events=True)
    app = App(inst, reader)
    try:
        gpus = inst.devices
        assert len(gpus) == 2
        app.thread.start()
        assert wait_for(lambda: memory(app.latest, gpus[0]) == 10 * GiB, 10) is not None

        errors_before = collection_errors(metric_points(reader))
        sim.write({**healthy(10), **FAULTS[fault]})
        faulted = [gpus[i] for i in FAULTED_GPUS[fault]]
        time.sleep(PHASE_S)
        during = metric_points(reader)
        errors_during = collection_errors(during) - errors_before
        gone = [memory(during, g) is None for g in faulted]

        sim.write(healthy(20))  # the fault clears; fresh values must come back
        recovered_after = wait_for(lambda: all(memory(app.latest, g) == 20 * GiB for g in gpus), 30)
        # With the driver answering again, a refresh gets its fresh sweep (30 s: a guard).
        fresh_after = inst.refresh(timeout=30)
    finally:
        app.stop.set()
        app.thread.join(timeout=30)
        inst.uninstrument()
        provider.shutdown()
    recovery = "never" if recovered_after is None else f"{recovered_after:.1f} s"
    row = dict(
        fault=f"NVML simulator: {fault.replace('-', ' ')} "
        f"({', '.join(f'{k}={v}' for k, v in FAULTS[fault].items() if 'delay' not in k)}"
        + (f", {HUNG_CALL_MS} ms hang in {len(HUNG_CALLS)} calls" if "time" in fault else "")
        + ") while an app thread collects every 20 ms",
        duration=f"{PHASE_S:.0f} s fault, sampler interval 50 ms",
        measured=f"app exceptions: {len(app.errors)}; collection errors counted: "
        f"{errors_during:.0f}; faulted GPUs' memory series gone: {sum(gone)}/{len(gone)}; "
        f"worst collect() {app.worst_collect * 1000:.0f} ms (bound {COLLECT_BOUND_S * 1000:.0f}); "
        f"worst refresh() {app.worst_refresh * 1000:.0f} ms (bound "
        f"{REFRESH_BOUND_S * 1000:.0f}; {app.stale_refreshes}/{app.refreshes} found no fresh "
        f"sweep in {REFRESH_TIMEOUT_S:.0f} s); fresh values after the fault cleared: {recovery}",
        lost=f"GPU readings during the fault ({PHASE_S:.0f} s)",
    )
    assert not app.errors, repr(app.errors[:3])
    assert app.worst_collect < COLLECT_BOUND_S, row
    assert app.worst_refresh <= REFRESH_BOUND_S, row  # a hung driver never holds the caller
    assert errors_during > 0 or all(gone), "the fault left no trace in the metrics"
    assert recovered_after is not None, "collection did not come back after the fault cleared"
    assert fresh_after, "refresh() found no fresh sweep after the fault cleared"
    return row
