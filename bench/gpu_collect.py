"""CPU cost of one GPU collection on the NVML simulator, against two baselines in the same run.

    python bench/gpu_collect.py            (or: nox -s bench -- gpu_collect)

For 1 and 8 simulated GPUs (two processes each) it times, per sweep, with the median over
many interleaved rounds of the calling thread's CPU time:
  - visiontel: NvmlBackend.sweep() (one field-value batch + scalar calls per device), and the
    SDK collection that reads its snapshot through every observable callback;
  - naive: a producer where each instrument makes its own NVML calls (handle lookup included);
  - nvml-ml-py alone: one nvidia-ml-py call per reading, no batching, no bookkeeping.
It also counts the NVML calls each makes per sweep (the simulator counts them). The simulator
answers in well under a microsecond; a real driver's calls cost more (ioctl round trips), so
on hardware the call counts weigh more than these CPU figures.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from visiontel.gpu.testing import NvmlSimulator

SWEEPS = int(os.environ.get("BENCH_SWEEPS", "300"))


def script(gpus: int) -> dict[str, object]:
    keys: dict[str, object] = {"device_count": gpus}
    for i in range(gpus):
        keys.update(NvmlSimulator.gpu(i))
        keys[f"gpu.{i}.process.0"] = f"{1000 + i},1073741824,0,0"
        keys[f"gpu.{i}.process.1"] = f"{2000 + i},2147483648,0,0"
        keys[f"gpu.{i}.process_utilization.0"] = f"{1000 + i},50,10,0,0"
    return keys


def naive(nvml: Any, count: int) -> dict[str, float]:
    """Each instrument asks NVML for its own value, as a straightforward exporter does."""
    out: dict[str, float] = {}
    for i in range(count):
        h = lambda: nvml.nvmlDeviceGetHandleByIndex(i)  # noqa: E731
        out[f"{i}.mem.used"] = nvml.nvmlDeviceGetMemoryInfo(h()).used
        out[f"{i}.mem.total"] = nvml.nvmlDeviceGetMemoryInfo(h()).total
        mem = nvml.nvmlDeviceGetMemoryInfo(h())
        out[f"{i}.mem.ratio"] = mem.used / mem.total
        out[f"{i}.util"] = nvml.nvmlDeviceGetUtilizationRates(h()).gpu
        out[f"{i}.memctl"] = nvml.nvmlDeviceGetUtilizationRates(h()).memory
        out[f"{i}.enc"] = nvml.nvmlDeviceGetEncoderUtilization(h())[0]
        out[f"{i}.dec"] = nvml.nvmlDeviceGetDecoderUtilization(h())[0]
        out.update(_per_reading(nvml, h(), i))
        for p in nvml.nvmlDeviceGetComputeRunningProcesses(h()):
            out[f"{i}.proc.{p.pid}"] = p.usedGpuMemory
        for s in nvml.nvmlDeviceGetProcessUtilization(h(), 0):
            out[f"{i}.putil.{s.pid}"] = s.smUtil
    return out


def _per_reading(nvml: Any, h: Any, i: int) -> dict[str, float]:
    return {
        f"{i}.power": nvml.nvmlDeviceGetPowerUsage(h),
        f"{i}.energy": nvml.nvmlDeviceGetTotalEnergyConsumption(h),
        f"{i}.temp": nvml.nvmlDeviceGetTemperature(h, 0),
        f"{i}.ecc.c": nvml.nvmlDeviceGetTotalEccErrors(h, 0, 1),
        f"{i}.ecc.u": nvml.nvmlDeviceGetTotalEccErrors(h, 1, 1),
        f"{i}.pcie.tx": nvml.nvmlDeviceGetPcieThroughput(h, 0),
        f"{i}.pcie.rx": nvml.nvmlDeviceGetPcieThroughput(h, 1),
        f"{i}.replay": nvml.nvmlDeviceGetPcieReplayCounter(h),
        f"{i}.sm": nvml.nvmlDeviceGetClockInfo(h, 1),
        f"{i}.memclk": nvml.nvmlDeviceGetClockInfo(h, 2),
        f"{i}.reasons": nvml.nvmlDeviceGetCurrentClocksEventReasons(h),
    }


def pynvml_alone(nvml: Any, handles: list[Any]) -> dict[str, float]:
    """The same readings with nvidia-ml-py alone: one call per reading, handles cached."""
    out: dict[str, float] = {}
    for i, h in enumerate(handles):
        mem = nvml.nvmlDeviceGetMemoryInfo(h)
        util = nvml.nvmlDeviceGetUtilizationRates(h)
        out[f"{i}.mem"], out[f"{i}.util"], out[f"{i}.memctl"] = mem.used, util.gpu, util.memory
        out[f"{i}.enc"] = nvml.nvmlDeviceGetEncoderUtilization(h)[0]
        out[f"{i}.dec"] = nvml.nvmlDeviceGetDecoderUtilization(h)[0]
        out.update(_per_reading(nvml, h, i))
        for p in nvml.nvmlDeviceGetComputeRunningProcesses(h):
            out[f"{i}.proc.{p.pid}"] = p.usedGpuMemory
        for s in nvml.nvmlDeviceGetProcessUtilization(h, 0):
            out[f"{i}.putil.{s.pid}"] = s.smUtil
    return out


def measure(
    sim: NvmlSimulator, rows: list[tuple[str, Callable[[], object]]]
) -> list[tuple[float, int]]:
    """(median CPU µs per sweep, NVML calls per sweep) of each row, measured interleaved:
    every round runs each producer once, so load changes on the machine hit all alike."""
    calls = []
    for _name, fn in rows:
        for _ in range(20):
            fn()
        before = sim.call_count()
        fn()
        calls.append(sim.call_count() - before)
    cpu: list[list[int]] = [[] for _ in rows]
    # The garbage collector runs every 50 rounds, never on a producer's clock, and the order
    # rotates so that no producer always runs first after it.
    gc.disable()
    try:
        for round_ in range(SWEEPS):
            if round_ % 50 == 0:
                gc.collect()
            for k in range(len(rows)):
                i = (round_ + k) % len(rows)
                fn = rows[i][1]
                t0 = time.thread_time_ns()
                fn()
                cpu[i].append(time.thread_time_ns() - t0)
    finally:
        gc.enable()
    return [(statistics.median(c) / 1000, n) for c, n in zip(cpu, calls)]


def main() -> int:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from visiontel.gpu._instruments import register
    from visiontel.gpu._nvml import NvmlBackend
    from visiontel.gpu._sampler import Sampler

    sim = NvmlSimulator.build(tempfile.mkdtemp(prefix="nvml-sim-"))
    os.environ.update(sim.env())
    print(f"sweeps per figure: {SWEEPS}; Python {sys.version.split()[0]}")
    header = f"{'GPUs':>4}  {'producer':<34} {'CPU µs/sweep':>13} {'NVML calls':>11} {'vs ours':>8}"
    print(header)
    for gpus in (1, 8):
        sim.write(script(gpus))
        backend = NvmlBackend(str(sim.library))
        nvml = backend.nvml
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(gpus)]
        sampler = Sampler(backend, 60.0, proc_root="/proc")
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        register(provider.get_meter("bench"), sampler)
        sampler.sweep_once()
        rows = [
            ("visiontel sweep (NvmlBackend)", backend.sweep),
            ("naive: own NVML calls per metric", lambda: naive(nvml, gpus)),
            ("nvidia-ml-py alone", lambda: pynvml_alone(nvml, handles)),
        ]
        # The SDK collect is measured on its own: it touches far more memory than a sweep
        # and would leave every producer that follows it with cold caches.
        results = measure(sim, rows)
        sdk = ("visiontel SDK collect (callbacks)", reader.get_metrics_data)
        results += measure(sim, [sdk])
        rows.append(sdk)
        ours = results[0][0]
        for (name, _fn), (cpu, calls) in zip(rows, results):
            print(f"{gpus:>4}  {name:<34} {cpu:>13.1f} {calls:>11} {cpu / ours:>7.2f}x")
        provider.shutdown()
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
