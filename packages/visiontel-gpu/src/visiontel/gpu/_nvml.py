"""NVML backend: one sweep reads every GPU through the real nvidia-ml-py bindings.

Per device a sweep makes about ten NVML calls: the scalar readings NVML has no field id for,
plus one nvmlDeviceGetFieldValues batch for energy, power, ECC, PCIe and row-remapping
counters. A reading the board does not support is remembered and never asked for again, so
it costs one call and one counted error for the life of the backend, and produces no series.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from visiontel.gpu import _model as m
from visiontel.gpu._backend import BackendUnavailable
from visiontel.gpu._nvml_requests import FieldValues, ProcessUtilization, RunningProcesses

_log = logging.getLogger("visiontel.gpu")

VENDOR = "NVIDIA"
_NOT_SUPPORTED = 3
_NOT_FOUND = 6
_GPU_IS_LOST = 15
_FUNCTION_NOT_FOUND = 13

# nvmlDeviceGetFieldValues ids (nvml.h) -> (reading key, scale to the reading's unit).
_FIELDS: dict[int, tuple[str, float]] = {
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
_POWER_FIELD = 186
# nvmlFieldValue_t: fieldId, scopeId, timestamp, latencyUsec, valueType, nvmlReturn, value.
_FIELD_VALUE = struct.Struct("=IIqqIIQ")
_DOUBLE = struct.Struct("=d")
_CLOCK_CALLS = {1: "nvmlDeviceGetClockInfo/1", 2: "nvmlDeviceGetClockInfo/2"}
_PROCESSES = "nvmlDeviceGetComputeRunningProcesses_v3"
_UTILIZATION = "nvmlDeviceGetProcessUtilization"


def _field_number(value_type: int, bits: int) -> float:
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


@functools.lru_cache(maxsize=64)
def error_name(code: int) -> str:
    """Low-cardinality error.type for an NVML return code, e.g. gpu_is_lost."""
    import pynvml

    for name, value in vars(pynvml).items():
        if name.startswith("NVML_ERROR_") and value == code:
            return str(name[len("NVML_ERROR_") :]).lower()
    return f"nvml_{code}"


def open_nvml(library: str) -> Any:
    """Import nvidia-ml-py, point it at `library` and initialise NVML; returns the module."""
    try:
        import pynvml
    except ImportError as exc:
        raise BackendUnavailable(
            "nvidia-ml-py is not installed (pip install nvidia-ml-py)", "nvidia-ml-py"
        ) from exc
    with pynvml.libLoadLock:
        # nvidia-ml-py loads "libnvidia-ml.so.1" by name; loading it ourselves first is how
        # the path becomes configurable. Once loaded, the library stays for the process.
        if pynvml.nvmlLib is None:
            try:
                pynvml.nvmlLib = ctypes.CDLL(library)
            except OSError as exc:
                raise BackendUnavailable(
                    f"the NVIDIA driver library {library} could not be loaded ({exc}); "
                    "install the NVIDIA driver or set VISIONTEL_GPU_NVML_LIBRARY",
                    library,
                ) from exc
            pynvml._nvmlGetFunctionPointer_cache.clear()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise BackendUnavailable(
            f"NVML did not start ({exc}); is the NVIDIA kernel driver loaded?", "NVIDIA driver"
        ) from exc
    return pynvml


@dataclass
class _Device:
    info: m.DeviceInfo
    handle: Any
    fields: FieldValues | None
    processes: RunningProcesses | None = None
    utilization: ProcessUtilization | None = None
    unsupported: set[str] = field(default_factory=set)
    power_by_call: bool = False
    last_process_ts: int = 0
    migs: list[_Device] = field(default_factory=list)


class _Lost(Exception):
    pass


class NvmlBackend:
    """Reads GPUs through NVML. Construct, sweep() as often as needed, close() once."""

    name = "nvml"

    def __init__(self, library: str, *, processes: bool = True) -> None:
        self._nvml = open_nvml(library)
        self.nvml: Any = self._nvml  # the pynvml module, for the event watcher
        self._processes = processes
        nvml = self._nvml
        try:
            self.driver_version: str = str(nvml.nvmlSystemGetDriverVersion())
            try:
                cuda = int(nvml.nvmlSystemGetCudaDriverVersion())
                self.cuda_version: str | None = f"{cuda // 1000}.{cuda % 1000 // 10}"
            except nvml.NVMLError:
                self.cuda_version = None
            self._devices = [self._discover(i) for i in range(nvml.nvmlDeviceGetCount())]
        except nvml.NVMLError as exc:
            nvml.nvmlShutdown()
            raise BackendUnavailable(f"NVML could not list the GPUs ({exc})", "GPU") from exc
        if not self._devices:
            nvml.nvmlShutdown()
            raise BackendUnavailable("NVML found no GPU on this machine", "GPU")
        self.devices: tuple[m.DeviceInfo, ...] = tuple(
            d for dev in self._devices for d in (dev.info, *(mig.info for mig in dev.migs))
        )

    def _discover(self, index: int) -> _Device:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        model = str(nvml.nvmlDeviceGetName(handle))
        uuid = str(nvml.nvmlDeviceGetUUID(handle))
        info = m.DeviceInfo(index, uuid, f"GPU {index}", model, self.driver_version)
        device = _Device(
            info,
            handle,
            FieldValues(nvml, list(_FIELDS)),
            RunningProcesses(nvml),
            ProcessUtilization(nvml),
        )
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        except nvml.NVMLError:
            current = 0  # boards without MIG answer NOT_SUPPORTED
        if current == 1:
            for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
                try:
                    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                except nvml.NVMLError:
                    continue  # empty slot
                mig_info = m.DeviceInfo(
                    index,
                    str(nvml.nvmlDeviceGetUUID(mig)),
                    f"GPU {index} MIG {slot}",
                    str(nvml.nvmlDeviceGetName(mig)),
                    self.driver_version,
                    parent=uuid,
                    mig_index=slot,
                )
                device.migs.append(_Device(mig_info, mig, None))
        return device

    def handle_address(self, handle: Any) -> int | None:
        return ctypes.cast(handle, ctypes.c_void_p).value

    def device_for_address(self, address: int | None) -> m.DeviceInfo | None:
        for dev in self._devices:
            if self.handle_address(dev.handle) == address:
                return dev.info
        return None

    @property
    def handles(self) -> list[tuple[m.DeviceInfo, Any]]:
        return [(dev.info, dev.handle) for dev in self._devices]

    def sweep(self) -> m.Snapshot:
        errors: list[m.CollectionError] = []
        samples: list[m.DeviceSample] = []
        for dev in self._devices:
            sample = self._sample(dev, errors)
            samples.append(sample)
            for mig in dev.migs:
                if sample.state == "failed" and not sample.readings:
                    samples.append(m.DeviceSample(mig.info, {}, "failed"))
                else:
                    samples.append(self._sample_mig(mig, errors))
        return m.Snapshot(time.monotonic(), tuple(samples), tuple(errors))

    def _call(self, dev: _Device, what: str, errors: list[m.CollectionError], *args: Any) -> Any:
        """One NVML call; None when it failed (counted), _Lost when the GPU is gone."""
        return self._guarded(dev, what, errors, getattr(self._nvml, what), *args)

    def _guarded(
        self, dev: _Device, what: str, errors: list[m.CollectionError], fn: Any, *args: Any
    ) -> Any:
        if what in dev.unsupported:
            return None
        nvml = self._nvml
        try:
            return fn(dev.handle, *args)
        except nvml.NVMLError as exc:
            code = int(exc.value)
            if code == _GPU_IS_LOST:
                raise _Lost from exc
            if code in (_NOT_SUPPORTED, _FUNCTION_NOT_FOUND):
                dev.unsupported.add(what)
            errors.append(m.CollectionError(error_name(code), dev.info.uuid))
            return None

    def _sample(self, dev: _Device, errors: list[m.CollectionError]) -> m.DeviceSample:
        readings: dict[str, float] = {}
        try:
            processes = self._read(dev, readings, errors)
        except _Lost:
            errors.append(m.CollectionError("gpu_is_lost", dev.info.uuid))
            return m.DeviceSample(dev.info, {}, "failed")
        state = "ok"
        if readings.get(m.REMAP_FAILURE):
            state = "failed"
        elif readings.get(m.REMAP_PENDING):
            state = "degraded"
        return m.DeviceSample(dev.info, readings, state, processes)

    def _read(
        self, dev: _Device, out: dict[str, float], errors: list[m.CollectionError]
    ) -> tuple[m.ProcessSample, ...]:
        mem = self._call(dev, "nvmlDeviceGetMemoryInfo", errors)
        if mem is not None:
            out[m.MEMORY_USED] = float(mem.used)
            out[m.MEMORY_LIMIT] = float(mem.total)
        util = self._call(dev, "nvmlDeviceGetUtilizationRates", errors)
        if util is not None:
            out[m.UTIL_GENERAL] = util.gpu / 100.0
            out[m.MEMORY_CONTROLLER] = util.memory / 100.0
        for what, key in (
            ("nvmlDeviceGetEncoderUtilization", m.UTIL_ENCODER),
            ("nvmlDeviceGetDecoderUtilization", m.UTIL_DECODER),
        ):
            value = self._call(dev, what, errors)
            if value is not None:
                out[key] = value[0] / 100.0
        temp = self._call(dev, "nvmlDeviceGetTemperature", errors, 0)  # NVML_TEMPERATURE_GPU
        if temp is not None:
            out[m.TEMP_GPU] = float(temp)
        for clock_type, key in ((1, m.CLOCK_SM), (2, m.CLOCK_MEMORY)):
            mhz = self._call_clock(dev, clock_type, errors)
            if mhz is not None:
                out[key] = mhz * 1e6
        reasons = self._call(dev, _REASONS_CALL, errors)
        if reasons is not None:
            out[m.CLOCK_EVENT_REASONS] = float(reasons)
        self._read_fields(dev, out, errors)
        if dev.power_by_call:
            power = self._call(dev, "nvmlDeviceGetPowerUsage", errors)
            if power is not None:
                out[m.POWER] = power / 1000.0
        return self._read_processes(dev, errors) if self._processes else ()

    def _call_clock(self, dev: _Device, clock_type: int, errors: list[m.CollectionError]) -> Any:
        what = _CLOCK_CALLS[clock_type]
        if what in dev.unsupported:
            return None
        value = self._call(dev, "nvmlDeviceGetClockInfo", errors, clock_type)
        if "nvmlDeviceGetClockInfo" in dev.unsupported:
            dev.unsupported.discard("nvmlDeviceGetClockInfo")
            dev.unsupported.add(what)
        return value

    def _read_fields(
        self, dev: _Device, out: dict[str, float], errors: list[m.CollectionError]
    ) -> None:
        batch = dev.fields
        if batch is None or not batch.field_ids:
            return
        raw = self._guarded(dev, "nvmlDeviceGetFieldValues", errors, batch)
        if raw is None:
            return
        dropped: list[int] = []
        # Decode the nvmlFieldValue_t array from its bytes: attribute access on
        # nvidia-ml-py's structures costs ~2 µs each.
        for field_id, _scope, _ts, _lat, value_type, ret, value in _FIELD_VALUE.iter_unpack(raw):
            key, scale = _FIELDS[field_id]
            if ret == 0:
                out[key] = _field_number(value_type, value) * scale
                continue
            if ret == _GPU_IS_LOST:
                raise _Lost
            errors.append(m.CollectionError(error_name(ret), dev.info.uuid))
            if ret == _NOT_SUPPORTED:
                dropped.append(field_id)
        if dropped:
            dev.fields = FieldValues(self._nvml, [f for f in batch.field_ids if f not in dropped])
            # Drivers before the instant-power field still answer the older call.
            dev.power_by_call = _POWER_FIELD in dropped or dev.power_by_call

    def _read_processes(
        self, dev: _Device, errors: list[m.CollectionError]
    ) -> tuple[m.ProcessSample, ...]:
        if dev.processes is None or dev.utilization is None:
            return ()
        procs = self._guarded(dev, _PROCESSES, errors, dev.processes) or []
        util: dict[int, dict[str, float]] = {}
        samples = self._guarded(dev, _UTILIZATION, errors, dev.utilization, dev.last_process_ts)
        for pid, stamp, sm, enc, dec in samples or ():
            dev.last_process_ts = max(dev.last_process_ts, stamp)
            util[pid] = {"general": sm / 100.0, "encoder": enc / 100.0, "decoder": dec / 100.0}
        mig = bool(dev.migs)  # outside MIG mode the instance ids mean nothing
        result = [
            m.ProcessSample(pid, used, util.pop(pid, m.NO_UTILIZATION), gi if mig else None)
            for pid, used, gi in procs
        ]
        result.extend(m.ProcessSample(pid, None, u) for pid, u in util.items())
        return tuple(result)

    def _sample_mig(self, mig: _Device, errors: list[m.CollectionError]) -> m.DeviceSample:
        readings: dict[str, float] = {}
        try:
            mem = self._call(mig, "nvmlDeviceGetMemoryInfo", errors)
        except _Lost:
            errors.append(m.CollectionError("gpu_is_lost", mig.info.uuid))
            return m.DeviceSample(mig.info, {}, "failed")
        if mem is not None:
            readings[m.MEMORY_USED] = float(mem.used)
            readings[m.MEMORY_LIMIT] = float(mem.total)
        return m.DeviceSample(mig.info, readings)

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            _log.debug("nvmlShutdown failed: %s", exc)


def _reasons_call() -> str:
    try:
        import pynvml
    except ImportError:
        return "nvmlDeviceGetCurrentClocksEventReasons"
    # nvidia-ml-py before 12.535.108 only has the older name of the same NVML call.
    if hasattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons"):
        return "nvmlDeviceGetCurrentClocksEventReasons"
    return "nvmlDeviceGetCurrentClocksThrottleReasons"


_REASONS_CALL = _reasons_call()
