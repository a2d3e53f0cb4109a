"""What each optional NVML entry point feeds, for tests that hide it (build(hide=...)).

For the script `script()` writes (two GPUs, GPU 1 in MIG mode with one instance, processes
on GPU 0), GONE says which series go away when an entry point of
visiontel.gpu._nvml_calls.METRICS is missing, and COUNTED on which devices the loss is
counted in visiontel.gpu.collection.errors (error.type=function_not_found, once each).
series(), errors() and matches() read the points an SDK reader collected.
"""

from __future__ import annotations

from typing import Any

from visiontel.gpu import _nvml_calls as calls
from visiontel.gpu.testing import NvmlSimulator

GiB = 1024**3
Points = dict[str, list[tuple[dict[str, Any], Any]]]
GPU0 = "GPU-00000000-1111-2222-3333-444455556666"
GPU1 = "GPU-00000001-1111-2222-3333-444455556666"
MIG = "MIG-11111111-0000-0000-0000-000000000000"
GPUS = (GPU0, GPU1)
ERRORS = "visiontel.gpu.collection.errors"
ANY = ""  # a GONE entry of every metric
MIG_INSTANCE = [(ANY, {"hw.id": MIG})]  # the instance is not found: none of its series
Series = frozenset[tuple[str, frozenset[tuple[str, Any]]]]

# What hiding each entry point takes away: (metric, attributes a point must have). Written
# out here, apart from the backend, so that a backend that drops more or less fails.
GONE: dict[str, list[tuple[str, dict[str, Any]]]] = {
    calls.DRIVER_VERSION: [],  # hw.driver_version reads "unknown": checked on its own
    calls.CUDA_VERSION: [],  # only the resource's nvidia.gpu.cuda_version
    calls.MIG_MODE: MIG_INSTANCE,
    calls.MIG_COUNT: MIG_INSTANCE,
    calls.MIG_HANDLE: MIG_INSTANCE,
    calls.MEMORY: [
        (name, {})
        for name in ("hw.gpu.memory.usage", "hw.gpu.memory.limit", "hw.gpu.memory.utilization")
    ],
    calls.UTILIZATION: [
        ("hw.gpu.utilization", {"hw.gpu.task": "general"}),
        ("nvidia.gpu.memory_controller.utilization", {}),
    ],
    calls.ENCODER: [("hw.gpu.utilization", {"hw.gpu.task": "encoder"})],
    calls.DECODER: [("hw.gpu.utilization", {"hw.gpu.task": "decoder"})],
    calls.TEMPERATURE: [("hw.temperature", {"hw.sensor_location": "gpu"})],
    calls.CLOCK: [("nvidia.gpu.clock.speed", {})],
    calls.CLOCK_REASONS[0]: [],  # the older name gives the same bits
    calls.CLOCK_REASONS[1]: [],  # not asked while the newer one answers
    calls.FIELD_VALUES: [  # the rest comes from per-reading calls
        ("hw.temperature", {"hw.sensor_location": "memory"}),
        ("hw.gpu.io", {}),
        ("nvidia.gpu.memory.remapped_rows", {}),
    ],
    calls.POWER: [],  # asked only without the batch (or its power field)
    calls.ENERGY: [],
    calls.ECC: [],
    calls.PCIE_REPLAYS: [],
    calls.PROCESSES[0]: [],  # the _v2 call answers
    calls.PROCESSES[1]: [],
    calls.PROCESSES[2]: [],
    calls.PROCESS_UTILIZATION: [("nvidia.gpu.process.utilization", {})],
}
# Where each loss is counted (None: a system call, no hw.id).
COUNTED: dict[str, tuple[str | None, ...]] = {
    calls.DRIVER_VERSION: (None,),
    calls.CUDA_VERSION: (None,),
    calls.MIG_MODE: GPUS,
    calls.MIG_COUNT: (GPU1,),  # asked only on the GPU in MIG mode
    calls.MIG_HANDLE: (GPU1,),
    calls.MEMORY: (*GPUS, MIG),
    calls.CLOCK_REASONS[1]: (),
    calls.POWER: (),
    calls.ENERGY: (),
    calls.ECC: (),
    calls.PCIE_REPLAYS: (),
    calls.PROCESSES[1]: (),
    calls.PROCESSES[2]: (),
}


def script(**extra: object) -> dict[str, object]:
    """Two GPUs, GPU 1 in MIG mode with one instance, two processes on GPU 0."""
    return {
        "device_count": 2,
        **NvmlSimulator.gpu(0),
        **NvmlSimulator.gpu(1),
        **{
            "gpu.1.mig.count": 1,
            "gpu.1.mig.0.uuid": MIG,
            "gpu.1.mig.0.name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
            "gpu.1.mig.0.memory.total": 10 * GiB,
            "gpu.1.mig.0.memory.used": 2 * GiB,
            "gpu.0.process.0": f"4242,{3 * GiB},0,0",
            "gpu.0.process.1": "4343,1048576,0,0",
            "gpu.0.process_utilization.0": "4242,60,20,0,5",
            **extra,
        },
    }


def series(points: Points) -> Series:
    """Every series but the error counter's, by name and attributes (the driver version
    aside: it reads "unknown" without nvmlSystemGetDriverVersion)."""
    return frozenset(
        (name, frozenset((k, v) for k, v in attrs.items() if k != "hw.driver_version"))
        for name, pts in points.items()
        if name != ERRORS
        for attrs, _ in pts
    )


def errors(points: Points) -> dict[Any, float]:
    """visiontel.gpu.collection.errors as {(error.type, hw.id or None): count}."""
    return {(a["error.type"], a.get("hw.id")): v for a, v in points.get(ERRORS, [])}


def matches(
    key: tuple[str, frozenset[tuple[str, Any]]], gone: list[tuple[str, dict[str, Any]]]
) -> bool:
    """Whether the series `key` is one of those `gone` describes."""
    name, attrs = key
    held = dict(attrs)
    return any(
        n in (name, ANY) and all(held.get(k) == v for k, v in want.items()) for n, want in gone
    )


def without(baseline: Series, hidden: str) -> Series:
    """The series expected when `hidden` is missing, from those of the full simulator."""
    return frozenset(key for key in baseline if not matches(key, GONE[hidden]))
