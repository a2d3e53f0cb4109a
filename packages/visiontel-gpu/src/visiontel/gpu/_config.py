"""Settings: constructor arguments, with VISIONTEL_GPU_* environment variables as defaults.

The README's table is the one list of these; keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass

from visiontel._support.env import (
    check_choice,
    check_float,
    env_bool,
    env_choice,
    env_float,
    env_str,
)

DEFAULT_LIBRARY = "libnvidia-ml.so.1"
BACKENDS = ("auto", "nvml", "dcgm", "jetson")
MIN_INTERVAL_S = 0.05


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
        """Arguments win (a malformed one raises ValueError); unset ones come from the
        environment (a malformed variable is logged once and its default used), then the
        defaults."""
        return cls(
            backend=check_choice("backend", backend, BACKENDS)
            if backend is not None
            else env_choice("VISIONTEL_GPU_BACKEND", "auto", BACKENDS),
            nvml_library=nvml_library or env_str("VISIONTEL_GPU_NVML_LIBRARY", DEFAULT_LIBRARY),
            interval=check_float("interval", interval, minimum=MIN_INTERVAL_S)
            if interval is not None
            else env_float("VISIONTEL_GPU_INTERVAL", 1.0, minimum=MIN_INTERVAL_S),
            processes=processes
            if processes is not None
            else env_bool("VISIONTEL_GPU_PROCESSES", True),
            events=events if events is not None else env_bool("VISIONTEL_GPU_EVENTS", True),
            proc_root=proc_root or env_str("VISIONTEL_GPU_PROC_ROOT", "/proc"),
            dcgm_address=dcgm_address or env_str("VISIONTEL_GPU_DCGM_ADDRESS", "127.0.0.1"),
            sysfs_root=sysfs_root or env_str("VISIONTEL_GPU_SYSFS_ROOT", "/"),
        )
