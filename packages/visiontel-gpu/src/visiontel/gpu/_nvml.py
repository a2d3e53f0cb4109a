"""NVML backend: one sweep reads every GPU through the real nvidia-ml-py bindings.

Per device a sweep makes about ten NVML calls: the scalar readings NVML has no field id for,
plus one nvmlDeviceGetFieldValues batch for energy, power, ECC, PCIe and row-remapping
counters. A reading the board does not support is remembered and never asked for again, so
it costs one call and one counted error for the life of the backend, and produces no series.
The same holds for an entry point the driver does not export (an older branch): only init,
the device count and each GPU's handle, name and UUID are required (_nvml_calls.py lists
them all); without any other call only the series that need it are missing.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from visiontel.gpu import _model as m
from visiontel.gpu import _nvml_calls as calls
from visiontel.gpu._backend import BackendUnavailable
from visiontel.gpu._nvml_fields import BY_CALL, FIELDS, POWER_FIELD, field_number
from visiontel.gpu._nvml_private import load_library
from visiontel.gpu._nvml_requests import (
    FieldValues,
    ProcessUtilization,
    RunningProcesses,
    UnsignedLongLong,
)

_log = logging.getLogger("visiontel.gpu")

VENDOR = "NVIDIA"
_NOT_SUPPORTED = 3
_NOT_FOUND = 6
_GPU_IS_LOST = 15
_FUNCTION_NOT_FOUND = 13


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
    try:
        # nvidia-ml-py loads "libnvidia-ml.so.1" by name; loading it ourselves first is how
        # the path becomes configurable.
        load_library(pynvml, library)
    except OSError as exc:
        raise BackendUnavailable(
            f"the NVIDIA driver library {library} could not be loaded ({exc}); "
            "install the NVIDIA driver or set VISIONTEL_GPU_NVML_LIBRARY",
            library,
        ) from exc
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
    # Alternatives for one reading, tried in order until one is exported.
    processes: Mapping[str, RunningProcesses] = field(default_factory=dict)
    utilization: ProcessUtilization | None = None
    reasons: Mapping[str, UnsignedLongLong] = field(default_factory=dict)
    unsupported: set[str] = field(default_factory=set)
    by_call: set[str] = field(default_factory=set)  # readings asked for one call each
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
        # Optional calls that failed while starting: the first sweep counts them.
        self._pending: list[m.CollectionError] = []
        nvml = self._nvml
        try:
            version = self._system(calls.DRIVER_VERSION)
            self.driver_version: str = "unknown" if version is None else str(version)
            cuda = self._system(calls.CUDA_VERSION)
            self.cuda_version: str | None = (
                None if cuda is None else f"{int(cuda) // 1000}.{int(cuda) % 1000 // 10}"
            )
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
            FieldValues(nvml, list(FIELDS)),
            {name: RunningProcesses(nvml, name) for name in calls.PROCESSES},
            ProcessUtilization(nvml),
            {name: UnsignedLongLong(nvml, name) for name in calls.CLOCK_REASONS},
        )
        # Boards without MIG answer NOT_SUPPORTED: not worth counting.
        mode = self._at_start(device, calls.MIG_MODE, quiet=(_NOT_SUPPORTED,))
        if mode is not None and mode[0] == 1:
            for slot in range(self._at_start(device, calls.MIG_COUNT) or 0):
                mig = self._at_start(device, calls.MIG_HANDLE, slot, quiet=(_NOT_FOUND,))
                if mig is None:  # an empty slot, or the call is missing
                    if calls.MIG_HANDLE in device.unsupported:
                        break
                    continue
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

    def _system(self, what: str) -> Any:
        """A system-wide optional reading; None (counted, without hw.id) when it failed."""
        try:
            return getattr(self._nvml, what)()
        except self._nvml.NVMLError as exc:
            self._pending.append(m.CollectionError(error_name(int(exc.value)), None))
            return None

    def _at_start(self, dev: _Device, what: str, *args: Any, quiet: tuple[int, ...] = ()) -> Any:
        """An optional call made once while starting; None when it failed (counted unless
        its code is in `quiet`; a missing entry point is remembered in dev.unsupported)."""
        try:
            return getattr(self._nvml, what)(dev.handle, *args)
        except self._nvml.NVMLError as exc:
            code = int(exc.value)
            if code == _FUNCTION_NOT_FOUND:
                dev.unsupported.add(what)
            if code not in quiet:
                self._pending.append(m.CollectionError(error_name(code), dev.info.uuid))
            return None

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
        errors, self._pending = self._pending, []
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
        """`what` names the entry point, or "entry point/variant" for one of several
        readings it gives: NOT_SUPPORTED drops that reading, a missing entry point all."""
        entry = what.partition("/")[0]
        if what in dev.unsupported or entry in dev.unsupported:
            return None
        nvml = self._nvml
        try:
            return fn(dev.handle, *args)
        except nvml.NVMLError as exc:
            code = int(exc.value)
            if code == _GPU_IS_LOST:
                raise _Lost from exc
            if code == _FUNCTION_NOT_FOUND:
                dev.unsupported.add(entry)
            elif code == _NOT_SUPPORTED:
                dev.unsupported.add(what)
            errors.append(m.CollectionError(error_name(code), dev.info.uuid))
            return None

    def _first(
        self, dev: _Device, chain: Mapping[str, Any], errors: list[m.CollectionError], *args: Any
    ) -> Any:
        """The answer of the first alternative in `chain` the device has; a missing or
        unsupported one is counted once and skipped from then on."""
        for what, request in chain.items():
            if what in dev.unsupported:
                continue
            value = self._guarded(dev, what, errors, request, *args)
            if what not in dev.unsupported:
                return value
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
        mem = self._call(dev, calls.MEMORY, errors)
        if mem is not None:
            out[m.MEMORY_USED] = float(mem.used)
            out[m.MEMORY_LIMIT] = float(mem.total)
        util = self._call(dev, calls.UTILIZATION, errors)
        if util is not None:
            out[m.UTIL_GENERAL] = util.gpu / 100.0
            out[m.MEMORY_CONTROLLER] = util.memory / 100.0
        for what, key in ((calls.ENCODER, m.UTIL_ENCODER), (calls.DECODER, m.UTIL_DECODER)):
            value = self._call(dev, what, errors)
            if value is not None:
                out[key] = value[0] / 100.0
        temp = self._call(dev, calls.TEMPERATURE, errors, 0)  # NVML_TEMPERATURE_GPU
        if temp is not None:
            out[m.TEMP_GPU] = float(temp)
        clock = getattr(self._nvml, calls.CLOCK)
        for clock_type, key in ((1, m.CLOCK_SM), (2, m.CLOCK_MEMORY)):  # NVML_CLOCK_SM, _MEM
            mhz = self._guarded(dev, f"{calls.CLOCK}/{clock_type}", errors, clock, clock_type)
            if mhz is not None:
                out[key] = mhz * 1e6
        reasons = self._first(dev, dev.reasons, errors)
        if reasons is not None:
            out[m.CLOCK_EVENT_REASONS] = float(reasons)
        self._read_fields(dev, out, errors)
        for key in dev.by_call:
            what, args, scale = BY_CALL[key]
            fn = getattr(self._nvml, what)
            value = self._guarded(dev, f"{what}/{key}", errors, fn, *args)
            if value is not None:
                out[key] = float(value) * scale
        return self._read_processes(dev, errors) if self._processes else ()

    def _read_fields(
        self, dev: _Device, out: dict[str, float], errors: list[m.CollectionError]
    ) -> None:
        batch = dev.fields
        if batch is None:
            return
        values = self._guarded(dev, calls.FIELD_VALUES, errors, batch)
        if values is None:
            if calls.FIELD_VALUES in dev.unsupported:
                # A driver without the batch: its readings that have a call of their own.
                dev.fields = None
                dev.by_call.update(BY_CALL)
            return
        dropped: list[int] = []
        for field_id, value_type, ret, value in values:
            key, scale = FIELDS[field_id]
            if ret == 0:
                out[key] = field_number(value_type, value) * scale
                continue
            if ret == _GPU_IS_LOST:
                raise _Lost
            errors.append(m.CollectionError(error_name(ret), dev.info.uuid))
            if ret == _NOT_SUPPORTED:
                dropped.append(field_id)
        if dropped:
            kept = [f for f in batch.field_ids if f not in dropped]
            dev.fields = FieldValues(self._nvml, kept) if kept else None
            # Drivers before the instant-power field still answer the older call.
            if POWER_FIELD in dropped:
                dev.by_call.add(m.POWER)

    def _read_processes(
        self, dev: _Device, errors: list[m.CollectionError]
    ) -> tuple[m.ProcessSample, ...]:
        if dev.utilization is None:
            return ()  # a MIG instance: its processes are listed on the GPU
        procs = self._first(dev, dev.processes, errors) or []
        util: dict[int, dict[str, float]] = {}
        samples = self._guarded(
            dev, calls.PROCESS_UTILIZATION, errors, dev.utilization, dev.last_process_ts
        )
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
            mem = self._call(mig, calls.MEMORY, errors)
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
