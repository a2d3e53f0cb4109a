"""Reusable NVML requests for the calls a sweep makes on every device at every tick.

nvidia-ml-py's wrappers build new ctypes arrays and Python objects on each call, and read
results through a structure class whose attribute access costs about a microsecond; for the
field-value batch and the process queries that is more than the NVML calls themselves.
These keep one buffer per device, call the NVML entry point directly and decode the result
from its bytes, with the element layouts of nvml.h written out here (nvidia-ml-py's own
structure classes have not always matched the driver: 12.535.77 declares a 32-byte process
entry where the driver writes 24 bytes).

An entry point is looked up at the request's first call, not when it is made: a driver that
lacks it then fails that call alone (FUNCTION_NOT_FOUND), inside the caller's per-device
error handling. With the private-API gate shut (_nvml_private) each request answers through
nvidia-ml-py's public wrapper of the same entry point instead.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

from visiontel.gpu import _nvml_calls as calls
from visiontel.gpu._nvml_private import entry_point

_INSUFFICIENT_SIZE = 7
_NOT_FOUND = 6
_FUNCTION_NOT_FOUND = 13
_NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF  # NVML_VALUE_NOT_AVAILABLE as unsigned long long
# nvmlFieldValue_t: fieldId, scopeId, timestamp, latencyUsec, valueType, nvmlReturn, value.
FIELD_VALUE = struct.Struct("=IIqqIIQ")
# nvmlProcessInfo_t (the _v3 and _v2 calls): pid, usedGpuMemory, gpuInstanceId,
# computeInstanceId. nvmlProcessInfo_v1_t (the unsuffixed call): pid, usedGpuMemory.
_PROCESS_LAYOUTS = {
    calls.PROCESSES[0]: struct.Struct("=I4xQII"),
    calls.PROCESSES[1]: struct.Struct("=I4xQII"),
    calls.PROCESSES[2]: struct.Struct("=I4xQ"),
}
# nvidia-ml-py's public wrapper of each process call; it wraps no v1 call (its unsuffixed
# function calls _v3).
_PUBLIC_PROCESSES = {calls.PROCESSES[0]: calls.PROCESSES[0], calls.PROCESSES[1]: calls.PROCESSES[1]}
# nvmlProcessUtilizationSample_t: pid, timeStamp, smUtil, memUtil, encUtil, decUtil.
_SAMPLE = struct.Struct("=I4xQIIII")

Field = tuple[int, int, int, int]  # field id, value type, per-field return code, value bits
Process = tuple[int, int | None, int | None]  # pid, used bytes, GPU instance id


class _Request:
    """One NVML entry point, resolved at its first call."""

    def __init__(self, nvml: Any, name: str) -> None:
        self.name = name
        self._nvml = nvml
        self._error = nvml.NVMLError
        self._fn: Any = None
        self._public = False

    def _resolve(self) -> Any:
        """The C function, or None to use the public wrapper; raises NVMLError
        (FUNCTION_NOT_FOUND) when the library lacks it, and asks again next time."""
        if self._fn is None and not self._public:
            self._fn = entry_point(self._nvml, self.name)
            self._public = self._fn is None
        return self._fn

    def _wrapper(self, name: str | None) -> Any:
        wrapper = getattr(self._nvml, name, None) if name else None
        if wrapper is None:  # nvidia-ml-py has no public call for it: as good as missing
            raise self._error(_FUNCTION_NOT_FOUND)
        return wrapper


class FieldValues(_Request):
    """One nvmlDeviceGetFieldValues request -> [(field id, value type, return, bits)]."""

    def __init__(self, nvml: Any, field_ids: list[int]) -> None:
        super().__init__(nvml, calls.FIELD_VALUES)
        self.field_ids = field_ids
        self._request = b"".join(FIELD_VALUE.pack(f, 0, 0, 0, 0, 0, 0) for f in field_ids)
        self._buffer = ctypes.create_string_buffer(self._request, len(self._request))

    def __call__(self, handle: Any) -> list[Field]:
        fn = self._resolve()
        if fn is None:
            values = self._wrapper(self.name)(handle, self.field_ids)
            return [(v.fieldId, v.valueType, v.nvmlReturn, v.value.ullVal) for v in values]
        ctypes.memmove(self._buffer, self._request, len(self._request))  # clear last outputs
        ret = fn(handle, ctypes.c_int32(len(self.field_ids)), self._buffer)
        if ret != 0:
            raise self._error(ret)
        return [
            (field_id, value_type, ret, value)
            for field_id, _s, _t, _l, value_type, ret, value in FIELD_VALUE.iter_unpack(
                self._buffer.raw
            )
        ]


class UnsignedLongLong(_Request):
    """An entry point answering one unsigned long long, e.g. the clock-event reasons."""

    def __call__(self, handle: Any) -> int:
        fn = self._resolve()
        if fn is None:
            return int(self._wrapper(self.name)(handle))
        value = ctypes.c_ulonglong()
        ret = fn(handle, ctypes.byref(value))
        if ret != 0:
            raise self._error(ret)
        return value.value


class _Growing(_Request):
    """A result array that grows when NVML answers INSUFFICIENT_SIZE."""

    def __init__(self, nvml: Any, name: str, element: struct.Struct, capacity: int = 8) -> None:
        super().__init__(nvml, name)
        self._element = element
        self._resize(capacity)

    def _resize(self, capacity: int) -> None:
        self._capacity = capacity
        self._buffer = ctypes.create_string_buffer(capacity * self._element.size)

    def _fetch(self, call: Any) -> bytes:
        for _ in range(3):  # processes may appear between the two calls: retry, bounded
            count = ctypes.c_uint(self._capacity)
            ret = call(self._buffer, ctypes.byref(count))
            if ret == 0:
                return self._buffer.raw[: count.value * self._element.size]
            if ret != _INSUFFICIENT_SIZE:
                raise self._error(ret)
            self._resize(count.value * 2 + 8)
        raise self._error(_INSUFFICIENT_SIZE)


class RunningProcesses(_Growing):
    """One generation of nvmlDeviceGetComputeRunningProcesses (`name`, from
    calls.PROCESSES) -> [(pid, used bytes or None, GPU instance id or None)]."""

    def __init__(self, nvml: Any, name: str) -> None:
        super().__init__(nvml, name, _PROCESS_LAYOUTS[name])

    def __call__(self, handle: Any) -> list[Process]:
        fn = self._resolve()
        if fn is None:
            return [
                (int(p.pid), p.usedGpuMemory, getattr(p, "gpuInstanceId", None))
                for p in self._wrapper(_PUBLIC_PROCESSES.get(self.name))(handle)
            ]
        raw = self._fetch(lambda buf, count: fn(handle, count, buf))
        return [
            (
                entry[0],
                None if entry[1] == _NOT_AVAILABLE else entry[1],
                entry[2] if len(entry) > 2 else None,  # v1 entries have no instance ids
            )
            for entry in self._element.iter_unpack(raw)
        ]


class ProcessUtilization(_Growing):
    """nvmlDeviceGetProcessUtilization -> [(pid, timestamp, sm %, encoder %, decoder %)]."""

    def __init__(self, nvml: Any) -> None:
        super().__init__(nvml, calls.PROCESS_UTILIZATION, _SAMPLE)

    def __call__(self, handle: Any, since: int) -> list[tuple[int, int, int, int, int]]:
        fn = self._resolve()
        try:
            if fn is None:
                return [
                    (s.pid, s.timeStamp, s.smUtil, s.encUtil, s.decUtil)
                    for s in self._wrapper(self.name)(handle, since)
                ]
            stamp = ctypes.c_ulonglong(since)
            raw = self._fetch(lambda buf, count: fn(handle, buf, count, stamp))
        except self._error as exc:
            if exc.value == _NOT_FOUND:
                return []  # no sample since `since`: nothing ran, not a failure
            raise
        return [(pid, ts, sm, enc, dec) for pid, ts, sm, _mem, enc, dec in _SAMPLE.iter_unpack(raw)]
