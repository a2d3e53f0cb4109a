"""Settings: constructor arguments, with VISIONTEL_GPU_* environment variables as defaults.

The README's table is the one list of these; keep the two in step.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

_log = logging.getLogger("visiontel.gpu")

DEFAULT_LIBRARY = "libnvidia-ml.so.1"
BACKENDS = ("auto", "nvml", "dcgm", "jetson")


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    _log.warning("%s=%r is not a boolean (use true or false); using %s", name, raw, default)
    return default


def _env_float(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        _log.warning("%s=%r is not a number of seconds; using %s", name, raw, default)
        return default
    if not math.isfinite(value):  # nan passes every comparison below; inf never sweeps again
        _log.warning("%s=%r is not a finite number of seconds; using %s", name, raw, default)
        return default
    if value < minimum:
        _log.warning("%s=%s is below the minimum %s; using %s", name, raw, minimum, minimum)
        return minimum
    return value


@dataclass(frozen=True)
class GPUConfig:
    """Resolved settings of one GPUInstrumentor or `visiontel-gpu serve` run."""

    backend: str = "auto"
    nvml_library: str = DEFAULT_LIBRARY
    interval: float = 1.0
    processes: bool = True
    events: bool = True
    proc_root: str = "/proc"
    dcgm_address: str = "127.0.0.1"
    sysfs_root: str = "/"  # the jetson backend reads <root>/sys, <root>/proc, <root>/etc

    @classmethod
    def resolve(
        cls,
        *,
        backend: str | None = None,
        nvml_library: str | None = None,
        interval: float | None = None,
        processes: bool | None = None,
        events: bool | None = None,
        proc_root: str | None = None,
        dcgm_address: str | None = None,
        sysfs_root: str | None = None,
    ) -> GPUConfig:
        """Arguments win; unset ones come from the environment, then the defaults."""
        env = os.environ
        chosen = (backend or env.get("VISIONTEL_GPU_BACKEND") or "auto").strip().lower()
        if chosen not in BACKENDS:
            _log.warning("GPU backend %r is not one of %s; using auto", chosen, ", ".join(BACKENDS))
            chosen = "auto"
        return cls(
            backend=chosen,
            nvml_library=nvml_library or env.get("VISIONTEL_GPU_NVML_LIBRARY") or DEFAULT_LIBRARY,
            interval=interval
            if interval is not None
            else _env_float("VISIONTEL_GPU_INTERVAL", 1.0, 0.05),
            processes=processes
            if processes is not None
            else _env_bool("VISIONTEL_GPU_PROCESSES", True),
            events=events if events is not None else _env_bool("VISIONTEL_GPU_EVENTS", True),
            proc_root=proc_root or env.get("VISIONTEL_GPU_PROC_ROOT") or "/proc",
            dcgm_address=dcgm_address or env.get("VISIONTEL_GPU_DCGM_ADDRESS") or "127.0.0.1",
            sysfs_root=sysfs_root or env.get("VISIONTEL_GPU_SYSFS_ROOT") or "/",
        )
