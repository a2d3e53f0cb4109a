"""What the nvmlDeviceGetFieldValues batch asks for, how its values decode, and which
per-reading calls stand in for it on a driver without the batch."""

from __future__ import annotations

import struct

from visiontel.gpu import _model as m
from visiontel.gpu import _nvml_calls as calls

# nvmlDeviceGetFieldValues ids (nvml.h) -> (reading key, scale to the reading's unit).
FIELDS: dict[int, tuple[str, float]] = {
    83: (m.ENERGY, 1e-3),  # NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, mJ
    186: (m.POWER, 1e-3),  # NVML_FI_DEV_POWER_INSTANT, mW
    82: (m.TEMP_MEMORY, 1.0),  # NVML_FI_DEV_MEMORY_TEMP
    5: (m.ECC_CORRECTED, 1.0),  # NVML_FI_DEV_ECC_SBE_AGG_TOTAL
    6: (m.ECC_UNCORRECTED, 1.0),  # NVML_FI_DEV_ECC_DBE_AGG_TOTAL
    94: (m.PCIE_REPLAYS, 1.0),  # NVML_FI_DEV_PCIE_REPLAY_COUNTER
    142: (m.REMAPPED_CORRECTABLE, 1.0),  # NVML_FI_DEV_REMAPPED_COR
    143: (m.REMAPPED_UNCORRECTABLE, 1.0),  # NVML_FI_DEV_REMAPPED_UNC
    144: (m.REMAP_PENDING, 1.0),  # NVML_FI_DEV_REMAPPED_PENDING
    145: (m.REMAP_FAILURE, 1.0),  # NVML_FI_DEV_REMAPPED_FAILURE
    197: (m.PCIE_TX, 1.0),  # NVML_FI_DEV_PCIE_COUNT_TX_BYTES
    198: (m.PCIE_RX, 1.0),  # NVML_FI_DEV_PCIE_COUNT_RX_BYTES
}
POWER_FIELD = 186
# Per-reading calls that stand in for the batch on a driver without it: reading key ->
# (entry point, arguments after the handle, scale). Memory temperature, PCIe bytes and row
# remapping have no such call here: without the batch they have no series.
BY_CALL: dict[str, tuple[str, tuple[int, ...], float]] = {
    m.POWER: (calls.POWER, (), 1e-3),  # mW
    m.ENERGY: (calls.ENERGY, (), 1e-3),  # mJ
    # NVML_MEMORY_ERROR_TYPE_CORRECTED / _UNCORRECTED, NVML_AGGREGATE_ECC
    m.ECC_CORRECTED: (calls.ECC, (0, 1), 1.0),
    m.ECC_UNCORRECTED: (calls.ECC, (1, 1), 1.0),
    m.PCIE_REPLAYS: (calls.PCIE_REPLAYS, (), 1.0),
}
_DOUBLE = struct.Struct("=d")


def field_number(value_type: int, bits: int) -> float:
    """The nvmlValue_t union, read as an unsigned 64-bit integer, as its declared type."""
    if value_type in (2, 3):  # unsigned long, unsigned long long
        return float(bits)
    if value_type == 1:  # unsigned int
        return float(bits & 0xFFFFFFFF)
    if value_type == 0:  # double
        return float(_DOUBLE.unpack(bits.to_bytes(8, "little"))[0])
    if value_type == 4:  # signed long long
        return float(bits - (1 << 64) if bits >> 63 else bits)
    if value_type == 5:  # signed int
        low = bits & 0xFFFFFFFF
        return float(low - (1 << 32) if low >> 31 else low)
    return float(bits & 0xFFFF)  # unsigned short
