"""What every backend offers, and how one is chosen."""

from __future__ import annotations

import logging
from typing import Protocol

from visiontel.gpu import _model as m
from visiontel.gpu._config import GPUConfig

_log = logging.getLogger("visiontel.gpu")


class BackendUnavailable(Exception):
    """No GPU telemetry here; the message names what is missing and what to do."""

    def __init__(self, message: str, missing: str) -> None:
        super().__init__(message)
        self.missing = missing


class Backend(Protocol):
    name: str
    devices: tuple[m.DeviceInfo, ...]
    driver_version: str
    cuda_version: str | None

    def sweep(self) -> m.Snapshot: ...

    def close(self) -> None: ...


def open_backend(config: GPUConfig) -> Backend:
    """The backend `config.backend` names; for `auto`: DCGM when its bindings import and
    nv-hostengine answers, else NVML, else (NVML unavailable) a Jetson's integrated GPU."""
    if config.backend == "jetson":
        from visiontel.gpu._jetson import JetsonBackend

        return JetsonBackend(config.sysfs_root)
    if config.backend in ("auto", "dcgm"):
        from visiontel.gpu import _dcgm

        try:
            return _dcgm.DcgmBackend(
                config.dcgm_address,
                config.nvml_library,
                processes=config.processes,
                interval=config.interval,
            )
        except BackendUnavailable as exc:
            if config.backend == "dcgm":
                raise
            _log.debug("DCGM not used: %s", exc)
    return open_nvml_or_jetson(config)


def open_nvml_or_jetson(config: GPUConfig) -> Backend:
    """NVML; under `auto`, a Jetson's sysfs when NVML is unavailable (it gives little there)."""
    from visiontel.gpu._nvml import NvmlBackend

    try:
        return NvmlBackend(config.nvml_library, processes=config.processes)
    except BackendUnavailable as nvml_missing:
        if config.backend != "auto":
            raise
        from visiontel.gpu._jetson import JetsonBackend

        try:
            backend = JetsonBackend(config.sysfs_root)
        except BackendUnavailable:
            # Not a Jetson either: NVML's reason is the one that tells what to install.
            raise nvml_missing from None
        _log.info("NVML not used (%s); reading the Jetson GPU from sysfs", nvml_missing)
        return backend


def resource_attributes(backend: Backend) -> dict[str, str | int | list[str]]:
    """What a resource says about the GPUs of this host (physical GPUs, not MIG slices)."""
    gpus = [d for d in backend.devices if d.parent is None]
    attributes: dict[str, str | int | list[str]] = {
        "nvidia.gpu.count": len(gpus),
        "nvidia.gpu.models": sorted({d.model for d in gpus}),
        "nvidia.gpu.driver_version": backend.driver_version,
    }
    if backend.cuda_version:
        attributes["nvidia.gpu.cuda_version"] = backend.cuda_version
    return attributes
