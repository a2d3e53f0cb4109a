"""DCGM backend: NVML readings plus DCGM's profiling fields, for the same instruments.

DCGM (nv-hostengine) samples profiling counters NVML does not expose: SM activity and
occupancy, tensor-pipe activity, DRAM activity and PCIe/NVLink byte rates. This backend
keeps the NVML sweep for everything else (identity, memory, power, processes, events) and
overlays the latest DCGM sample, matched by GPU UUID. The DCGM calls follow the Python
bindings NVIDIA ships with DCGM (pydcgm, dcgm_structs, dcgm_fields); they were exercised only
against a stand-in module in this repository's tests, never against a real nv-hostengine.
"""

from __future__ import annotations

import logging
from typing import Any

from visiontel.gpu import _model as m
from visiontel.gpu._backend import BackendUnavailable
from visiontel.gpu._nvml import NvmlBackend

_log = logging.getLogger("visiontel.gpu")

# dcgm_fields constant name -> (reading key, scale to the reading's unit)
_PROFILING_FIELDS: dict[str, tuple[str, float]] = {
    "DCGM_FI_PROF_SM_ACTIVE": (m.SM_ACTIVE, 1.0),
    "DCGM_FI_PROF_SM_OCCUPANCY": (m.SM_OCCUPANCY, 1.0),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": (m.TENSOR_ACTIVE, 1.0),
    # Same quantity as NVML's memory utilisation (device memory busy), measured better.
    "DCGM_FI_PROF_DRAM_ACTIVE": (m.MEMORY_CONTROLLER, 1.0),
    "DCGM_FI_PROF_PCIE_TX_BYTES": (m.PCIE_TX_RATE, 1.0),
    "DCGM_FI_PROF_PCIE_RX_BYTES": (m.PCIE_RX_RATE, 1.0),
    "DCGM_FI_PROF_NVLINK_TX_BYTES": (m.NVLINK_TX_RATE, 1.0),
    "DCGM_FI_PROF_NVLINK_RX_BYTES": (m.NVLINK_RX_RATE, 1.0),
}
_WATCH_INTERVAL_US = 1_000_000
_MAX_KEEP_AGE_S = 60.0


class DcgmBackend:
    name = "dcgm"

    def __init__(
        self, address: str, nvml_library: str, *, processes: bool = True, interval: float = 1.0
    ) -> None:
        try:
            import dcgm_fields
            import dcgm_structs
            import pydcgm
        except ImportError as exc:
            raise BackendUnavailable(
                "the DCGM Python bindings (pydcgm) are not importable; install DCGM and add "
                "its bindings directory to PYTHONPATH",
                "pydcgm",
            ) from exc
        self._fields: dict[int, tuple[str, float]] = {}
        for const, target in _PROFILING_FIELDS.items():
            field_id = getattr(dcgm_fields, const, None)
            if isinstance(field_id, int):
                self._fields[field_id] = target
        try:
            dcgm_structs._dcgmInit()
            self._handle = pydcgm.DcgmHandle(
                None, ipAddress=address, opMode=dcgm_structs.DCGM_OPERATION_MODE_AUTO
            )
            system = self._handle.GetSystem()
            self._group = system.GetDefaultGroup()
            self._uuid_by_gpu_id = {
                gpu_id: str(system.discovery.GetGpuAttributes(gpu_id).identifiers.uuid)
                for gpu_id in self._group.GetGpuIds()
            }
            self._field_group = pydcgm.DcgmFieldGroup(
                self._handle, "visiontel_gpu", list(self._fields)
            )
            self._group.samples.WatchFields(
                self._field_group, int(interval * _WATCH_INTERVAL_US), _MAX_KEEP_AGE_S, 0
            )
        except dcgm_structs.DCGMError as exc:
            raise BackendUnavailable(
                f"DCGM at {address} is not usable ({exc}); is nv-hostengine running?",
                "nv-hostengine",
            ) from exc
        self._dcgm_error = dcgm_structs.DCGMError
        self._nvml = NvmlBackend(nvml_library, processes=processes)
        self.nvml: Any = self._nvml.nvml
        self.devices = self._nvml.devices
        self.driver_version = self._nvml.driver_version
        self.cuda_version = self._nvml.cuda_version

    @property
    def handles(self) -> list[tuple[m.DeviceInfo, Any]]:
        return self._nvml.handles

    def device_for_address(self, address: int | None) -> m.DeviceInfo | None:
        return self._nvml.device_for_address(address)

    def _profiling(self, errors: list[m.CollectionError]) -> dict[str, dict[str, float]]:
        """Latest DCGM values by GPU UUID; blank values (field not supported) are left out."""
        try:
            latest = self._group.samples.GetLatest(self._field_group).values
        except self._dcgm_error as exc:
            errors.append(m.CollectionError(f"dcgm_{getattr(exc, 'value', 'error')}"))
            return {}
        result: dict[str, dict[str, float]] = {}
        for gpu_id, by_field in latest.items():
            uuid = self._uuid_by_gpu_id.get(gpu_id)
            if uuid is None:
                continue
            readings = result.setdefault(uuid, {})
            for field_id, values in by_field.items():
                target = self._fields.get(field_id)
                if target is None or not values or values[-1].isBlank:
                    continue
                key, scale = target
                readings[key] = float(values[-1].value) * scale
        return result

    def sweep(self) -> m.Snapshot:
        base = self._nvml.sweep()
        errors = list(base.errors)
        profiling = self._profiling(errors)
        devices = tuple(
            m.DeviceSample(
                d.info, {**d.readings, **profiling.get(d.info.uuid, {})}, d.state, d.processes
            )
            if d.info.uuid in profiling and d.state != "failed"
            else d
            for d in base.devices
        )
        return m.Snapshot(base.taken_at, devices, tuple(errors))

    def close(self) -> None:
        try:
            self._field_group.Delete()
        except self._dcgm_error as exc:
            _log.debug("DCGM field group not deleted: %s", exc)
        del self._handle
        self._nvml.close()
