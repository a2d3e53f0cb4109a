"""XID and other critical NVML events as OpenTelemetry log records, from their own thread.

The thread blocks in nvmlEventSetWait (ctypes releases the GIL there) with a short timeout,
so it never delays a sweep and notices a stop request within `wait_ms`. A driver that lacks
an event entry point (_nvml_calls.EVENTS) turns events off, said once in the log; metrics
are not affected.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from typing import Any, Protocol

from opentelemetry._logs import Logger, LogRecord, SeverityNumber

from visiontel.gpu import _model as m
from visiontel.gpu._instruments import device_attributes
from visiontel.gpu._sampler import RateLimitedLog

_log = logging.getLogger("visiontel.gpu")

# nvmlEventType* bits worth a log record -> (event kind, severity).
EVENT_TYPES: dict[int, tuple[str, SeverityNumber]] = {
    0x0008: ("xid", SeverityNumber.ERROR),
    0x0002: ("double_bit_ecc", SeverityNumber.ERROR),
    0x0400: ("dram_retirement", SeverityNumber.WARN),
    0x0800: ("dram_retirement_failure", SeverityNumber.ERROR),
    0x1000: ("non_fatal_poison", SeverityNumber.WARN),
    0x2000: ("fatal_poison", SeverityNumber.FATAL),
    0x4000: ("gpu_unavailable", SeverityNumber.FATAL),
}
_TIMEOUT = 10
_FUNCTION_NOT_FOUND = 13


class EventSource(Protocol):
    nvml: Any

    @property
    def handles(self) -> list[tuple[m.DeviceInfo, Any]]: ...

    def device_for_address(self, address: int | None) -> m.DeviceInfo | None: ...


class EventWatcher:
    def __init__(self, source: EventSource, logger: Logger, *, wait_ms: int = 250) -> None:
        self._source = source
        self._nvml = source.nvml
        self._logger = logger
        self._wait_ms = wait_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._set: Any = None
        self._log = RateLimitedLog()
        self.registered: list[str] = []  # hw.id of each device that delivers events

    def start(self) -> bool:
        """Register for events on every device that supports them; False when none does."""
        nvml = self._nvml
        try:
            self._set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as exc:
            _log.info("GPU events are not available (%s); XID log records disabled", exc)
            return False
        wanted = sum(EVENT_TYPES)
        for info, handle in self._source.handles:
            try:
                supported = nvml.nvmlDeviceGetSupportedEventTypes(handle) & wanted
                if supported:
                    nvml.nvmlDeviceRegisterEvents(handle, supported, self._set)
                    self.registered.append(info.uuid)
            except nvml.NVMLError as exc:
                if exc.value == _FUNCTION_NOT_FOUND:  # the driver lacks it: so do all GPUs
                    _log.info("GPU events are not available (%s); XID log records disabled", exc)
                    self.registered.clear()
                    break
                _log.info("no events from %s (%s): %s", info.name, info.uuid, exc)
        if not self.registered:
            self._free()
            return False
        self._thread = threading.Thread(target=self._run, name="visiontel-gpu-events", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        nvml = self._nvml
        while not self._stop.is_set():
            try:
                data = nvml.nvmlEventSetWait(self._set, self._wait_ms)
            except nvml.NVMLError as exc:
                if exc.value == _FUNCTION_NOT_FOUND:  # a driver without it: no event ever
                    _log.info("GPU events are not available (%s); XID log records disabled", exc)
                    return
                if exc.value != _TIMEOUT:
                    self._log.exception("wait", f"waiting for GPU events failed: {exc}")
                    self._stop.wait(1.0)
                continue
            try:
                self._emit(data)
            except Exception:
                self._log.exception("emit", "turning a GPU event into a log record failed")

    def _emit(self, data: Any) -> None:
        info = self._source.device_for_address(ctypes.cast(data.device, ctypes.c_void_p).value)
        kind, severity = EVENT_TYPES.get(int(data.eventType), ("other", SeverityNumber.WARN))
        attributes: dict[str, Any] = dict(device_attributes(info)) if info else {}
        attributes["nvidia.gpu.event.type"] = kind
        attributes["nvidia.gpu.event.data"] = int(data.eventData)
        where = f"{info.name} ({info.uuid})" if info else "an unknown GPU"
        if kind == "xid":
            attributes["nvidia.gpu.xid"] = int(data.eventData)
            body = f"NVIDIA XID {int(data.eventData)} on {where}"
        else:
            body = f"NVIDIA GPU event {kind} on {where}"
        self._logger.emit(
            LogRecord(
                timestamp=time.time_ns(),
                severity_number=severity,
                severity_text=severity.name,
                body=body,
                attributes=attributes,
            )
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._wait_ms / 1000 + 5)
        self._free()

    def _free(self) -> None:
        if self._set is not None:
            try:
                self._nvml.nvmlEventSetFree(self._set)
            except self._nvml.NVMLError as exc:  # a driver without it: the set stays
                _log.debug("nvmlEventSetFree failed: %s", exc)
            self._set = None
