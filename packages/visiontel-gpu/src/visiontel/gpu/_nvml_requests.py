"""Reusable NVML requests for the calls a sweep makes on every device at every tick.

nvidia-ml-py's wrappers build new ctypes arrays and Python objects on each call, and read
results through a structure class whose attribute access costs about a microsecond; for the
field-value batch and the two process queries that is more than the NVML calls themselves.
These keep one buffer per device, call the same NVML entry points (looked up through
nvidia-ml-py, with its structure layouts) and decode the results from their bytes.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

_INSUFFICIENT_SIZE = 7
_NOT_FOUND = 6
_NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF  # NVML_VALUE_NOT_AVAILABLE as unsigned long long
# nvmlProcessInfo_v2_t (the _v3 call's element): pid, usedGpuMemory, gpuInstanceId, ...
_PROCESS = struct.Struct("=I4xQII")
# nvmlProcessUtilizationSample_t: pid, timeStamp, smUtil, memUtil, encUtil, decUtil.
_SAMPLE = struct.Struct("=I4xQIIII")


class FieldValues:
    """One nvmlDeviceGetFieldValues request; returns the raw nvmlFieldValue_t array."""

    def __init__(self, nvml: Any, field_ids: list[int]) -> None:
        self.field_ids = field_ids
        self._fn = nvml._nvmlGetFunctionPointer("nvmlDeviceGetFieldValues")
        self._error = nvml.NVMLError
        self._buffer = (nvml.c_nvmlFieldValue_t * len(field_ids))()
        for slot, field_id in zip(self._buffer, field_ids, strict=True):
            slot.fieldId = field_id
        self._size = ctypes.sizeof(self._buffer)
        self._request = ctypes.string_at(ctypes.addressof(self._buffer), self._size)

    def __call__(self, handle: Any) -> bytes:
        ctypes.memmove(self._buffer, self._request, self._size)  # clear last call's outputs
        ret = self._fn(handle, ctypes.c_int32(len(self.field_ids)), ctypes.byref(self._buffer))
        if ret != 0:
            raise self._error(ret)
        return ctypes.string_at(ctypes.addressof(self._buffer), self._size)


class _Growing:
    """A result array that grows when NVML answers INSUFFICIENT_SIZE."""

    def __init__(self, nvml: Any, function: str, element: Any, capacity: int = 8) -> None:
        self._fn = nvml._nvmlGetFunctionPointer(function)
        self._error = nvml.NVMLError
        self._element = element
        self._resize(capacity)

    def _resize(self, capacity: int) -> None:
        self._capacity = capacity
        self._buffer = (self._element * capacity)()

    def _fetch(self, call: Any, element_size: int) -> bytes:
        for _ in range(3):  # processes may appear between the two calls: retry, bounded
            count = ctypes.c_uint(self._capacity)
            ret = call(self._buffer, ctypes.byref(count))
            if ret == 0:
                return ctypes.string_at(ctypes.addressof(self._buffer), count.value * element_size)
            if ret != _INSUFFICIENT_SIZE:
                raise self._error(ret)
            self._resize(count.value * 2 + 8)
        raise self._error(_INSUFFICIENT_SIZE)


class RunningProcesses(_Growing):
    """nvmlDeviceGetComputeRunningProcesses_v3 -> [(pid, used bytes or None, gpu instance)]."""

    def __init__(self, nvml: Any) -> None:
        super().__init__(nvml, "nvmlDeviceGetComputeRunningProcesses_v3", nvml.c_nvmlProcessInfo_t)

    def __call__(self, handle: Any) -> list[tuple[int, int | None, int]]:
        raw = self._fetch(lambda buf, count: self._fn(handle, count, buf), _PROCESS.size)
        return [
            (pid, None if used == _NOT_AVAILABLE else used, gi)
            for pid, used, gi, _ci in _PROCESS.iter_unpack(raw)
        ]


class ProcessUtilization(_Growing):
    """nvmlDeviceGetProcessUtilization -> [(pid, timestamp, sm %, encoder %, decoder %)]."""

    def __init__(self, nvml: Any) -> None:
        super().__init__(
            nvml, "nvmlDeviceGetProcessUtilization", nvml.c_nvmlProcessUtilizationSample_t
        )
        self._not_found = nvml.NVMLError_NotFound

    def __call__(self, handle: Any, since: int) -> list[tuple[int, int, int, int, int]]:
        stamp = ctypes.c_ulonglong(since)
        try:
            raw = self._fetch(lambda buf, count: self._fn(handle, buf, count, stamp), _SAMPLE.size)
        except self._not_found:
            return []  # no sample since `since`: nothing ran, not a failure
        return [(pid, ts, sm, enc, dec) for pid, ts, sm, _mem, enc, dec in _SAMPLE.iter_unpack(raw)]
