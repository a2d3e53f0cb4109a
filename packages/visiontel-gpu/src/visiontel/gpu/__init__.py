"""OpenTelemetry GPU metrics and events for NVIDIA GPUs (NVML or DCGM; sysfs on Jetson).

    from visiontel.gpu import GPUInstrumentor
    GPUInstrumentor().instrument()          # or: opentelemetry-instrument, entry point "gpu"

Instruments follow the OpenTelemetry hardware semantic conventions (hw.gpu.*, hw.power,
hw.energy, hw.temperature, hw.errors, hw.status); NVIDIA-only readings use `nvidia.gpu.*`.
Without a driver or GPU, one warning says what is missing and nothing is registered.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections.abc import Collection
from typing import Any

from opentelemetry._logs import get_logger
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.metrics import get_meter

from visiontel.gpu._backend import Backend, BackendUnavailable, open_backend
from visiontel.gpu._config import GPUConfig
from visiontel.gpu._events import EventWatcher
from visiontel.gpu._instruments import register
from visiontel.gpu._sampler import Sampler
from visiontel.gpu.package import _instruments
from visiontel.gpu.version import __version__

__all__ = ["GPUConfig", "GPUInstrumentor", "__version__"]

_log = logging.getLogger("visiontel.gpu")


class _Running:
    def __init__(self, backend: Backend, sampler: Sampler, events: EventWatcher | None) -> None:
        self.backend, self.sampler, self.events = backend, sampler, events

    def stop(self) -> None:
        if self.events is not None:
            self.events.stop()
        self.sampler.stop()
        self.backend.close()


class GPUInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Registers the GPU instruments and starts the sampler (and event) threads.

    instrument() accepts `meter_provider`, `logger_provider` and every GPUConfig field as a
    keyword (backend, nvml_library, interval, processes, events, proc_root, dcgm_address,
    sysfs_root);
    unset ones come from the VISIONTEL_GPU_* environment variables.
    """

    _running: _Running | None = None
    _lock = threading.Lock()

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        fields = ("backend", "nvml_library", "interval", "processes", "events", "proc_root")
        config = GPUConfig.resolve(
            **{k: kwargs[k] for k in (*fields, "dcgm_address", "sysfs_root") if k in kwargs}
        )
        try:
            backend = open_backend(config)
        except BackendUnavailable as exc:
            _log.warning("visiontel-gpu: GPU metrics disabled: %s", exc)
            return
        except Exception:
            _log.warning("visiontel-gpu: GPU metrics disabled: backend failed", exc_info=True)
            return
        proc_root = config.proc_root if config.processes else None
        sampler = Sampler(backend, config.interval, proc_root=proc_root)
        meter = get_meter(__name__, __version__, kwargs.get("meter_provider"))
        register(meter, sampler)
        sampler.start()
        events = None
        if config.events and hasattr(backend, "nvml"):
            logger = get_logger(__name__, __version__, kwargs.get("logger_provider"))
            events = EventWatcher(backend, logger)  # type: ignore[arg-type]
            if not events.start():
                events = None
        _log.info(
            "visiontel-gpu: %s backend, %d device(s), sweeping every %ss",
            backend.name,
            len(backend.devices),
            config.interval,
        )
        with self._lock:
            self._running = _Running(backend, sampler, events)

    def _uninstrument(self, **kwargs: Any) -> None:
        with self._lock:
            running, self._running = self._running, None
        if running is not None:
            running.stop()

    def refresh(self, timeout: float = 1.0) -> bool:
        """Sweep now instead of waiting for the sampler's next tick (e.g. before a flush).

        The sampler thread does the sweep; this waits at most `timeout` seconds for it and
        returns True when a sweep begun after the call has stored fresh readings. False: not
        instrumented, or no such sweep within `timeout` (a hung driver, a failed sweep); the
        exporter then keeps the last readings until the sweep lands. Concurrent calls share
        one sweep; timeout=0 asks for the sweep without waiting for it.
        """
        if not isinstance(timeout, numbers.Real):
            raise TypeError(
                f"refresh(timeout={timeout!r}): timeout is a number of seconds, "
                f"not {type(timeout).__name__}"
            )
        if not (math.isfinite(timeout) and timeout >= 0):
            raise ValueError(
                f"refresh(timeout={timeout!r}): timeout must be a finite number of seconds "
                ">= 0 (0 asks for a sweep without waiting for it)"
            )
        running = self._running
        if running is None:
            return False
        return running.sampler.refresh(float(timeout))

    @property
    def devices(self) -> tuple[str, ...]:
        """hw.id of every device being collected; empty when not instrumented."""
        running = self._running
        return tuple(d.uuid for d in running.backend.devices) if running else ()
