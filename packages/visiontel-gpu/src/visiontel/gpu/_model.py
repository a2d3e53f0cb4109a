"""What one collection sweep produces: plain immutable records, backend-neutral.

Readings are kept in a dict keyed by the names below so that a backend only fills what its
hardware answered: a key that is absent means "not supported / not read", and no instrument
reports a series for it (never a fake 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

NO_UTILIZATION: Mapping[str, float] = MappingProxyType({})

# Reading keys shared by backends and instruments.
MEMORY_USED = "memory.used"  # bytes
MEMORY_LIMIT = "memory.limit"  # bytes
UTIL_GENERAL = "utilization.general"  # ratio 0-1
UTIL_ENCODER = "utilization.encoder"
UTIL_DECODER = "utilization.decoder"
MEMORY_CONTROLLER = "memory_controller.utilization"  # ratio 0-1 (NVML "memory" util, DRAM active)
POWER = "power"  # W
ENERGY = "energy"  # J, cumulative
TEMP_GPU = "temperature.gpu"  # Cel
TEMP_MEMORY = "temperature.memory"  # Cel
CLOCK_SM = "clock.sm"  # Hz
CLOCK_MEMORY = "clock.memory"  # Hz
CLOCK_EVENT_REASONS = "clock.event_reasons"  # NVML bit mask
ECC_CORRECTED = "ecc.corrected"  # cumulative count
ECC_UNCORRECTED = "ecc.uncorrected"
PCIE_TX = "pcie.tx"  # bytes, cumulative
PCIE_RX = "pcie.rx"
PCIE_REPLAYS = "pcie.replays"  # cumulative count
REMAPPED_CORRECTABLE = "remapped_rows.correctable"
REMAPPED_UNCORRECTABLE = "remapped_rows.uncorrectable"
REMAP_PENDING = "remap.pending"  # 0/1
REMAP_FAILURE = "remap.failure"  # 0/1
# DCGM profiling readings (ratios 0-1, and byte rates).
SM_ACTIVE = "sm.active"
SM_OCCUPANCY = "sm.occupancy"
TENSOR_ACTIVE = "tensor.active"
PCIE_TX_RATE = "pcie.tx_rate"  # By/s
PCIE_RX_RATE = "pcie.rx_rate"
NVLINK_TX_RATE = "nvlink.tx_rate"
NVLINK_RX_RATE = "nvlink.rx_rate"
# Jetson (Tegra) readings with no hw.* meaning. Those ending in "/" are prefixes: the rest
# of the key is a board-specific name (an INA3221 rail label, a thermal zone type), which
# becomes an attribute of the series, so a board's rails need no constant each.
JETSON_RAIL_POWER = "jetson.rail.power/"  # W, + rail label
JETSON_RAIL_ENERGY = "jetson.rail.energy/"  # J, integrated by the backend, + rail label
JETSON_TEMPERATURE = "jetson.temperature/"  # Cel, + thermal zone type
JETSON_GPU_FREQ_MIN = "jetson.gpu.frequency.min"  # Hz, devfreq floor (nvpmodel sets it)
JETSON_GPU_FREQ_MAX = "jetson.gpu.frequency.max"  # Hz, devfreq ceiling
JETSON_EMC_FREQUENCY = "jetson.emc.frequency"  # Hz, external memory controller clock
JETSON_EMC_UTILIZATION = "jetson.emc.utilization"  # ratio 0-1
JETSON_NVMAP_USED = "jetson.memory.nvmap"  # bytes the nvmap allocator holds (GPU buffers)


@dataclass(frozen=True)
class DeviceInfo:
    """Identity of a GPU or MIG instance; stable for the life of the backend."""

    index: int
    uuid: str
    name: str
    model: str
    driver_version: str
    parent: str | None = None  # the physical GPU's uuid, for a MIG instance
    mig_index: int | None = None


# Per-sweep records are NamedTuples: built several times per GPU per second, and a frozen
# dataclass costs several times more to construct.
class ProcessSample(NamedTuple):
    """One process's use of one device."""

    pid: int
    memory_used: int | None = None  # bytes
    utilization: Mapping[str, float] = NO_UTILIZATION  # hw.gpu.task -> ratio
    gpu_instance_id: int | None = None


class DeviceSample(NamedTuple):
    info: DeviceInfo
    readings: dict[str, float]
    state: str = "ok"  # hw.state: ok, degraded or failed
    processes: tuple[ProcessSample, ...] = ()


class CollectionError(NamedTuple):
    """A read that failed, counted by visiontel.gpu.collection.errors."""

    error_type: str  # e.g. gpu_is_lost, not_supported, timeout
    device: str | None = None  # hw.id, when the failure belongs to one device


class Snapshot(NamedTuple):
    """The result of one sweep; instruments read the latest one."""

    taken_at: float  # time.monotonic()
    devices: tuple[DeviceSample, ...]
    errors: tuple[CollectionError, ...] = ()
