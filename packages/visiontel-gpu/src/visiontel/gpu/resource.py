"""Resource detector (entry point `opentelemetry_resource_detector: gpu`).

Adds nvidia.gpu.count, nvidia.gpu.models, nvidia.gpu.driver_version and
nvidia.gpu.cuda_version, through NVML or, on a Jetson without it, from sysfs (_jetson.py).
It needs the OpenTelemetry SDK, which is what loads detectors, so it lives apart from the
API-only instrumentor. Enable it with OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=gpu (or pass it to
Resource.create / get_aggregated_resources).
"""

from __future__ import annotations

import logging

from opentelemetry.sdk.resources import Resource, ResourceDetector

from visiontel.gpu._backend import (
    Backend,
    BackendUnavailable,
    open_nvml_or_jetson,
    resource_attributes,
)
from visiontel.gpu._config import GPUConfig

_log = logging.getLogger("visiontel.gpu")


class GPUResourceDetector(ResourceDetector):
    def __init__(self, nvml_library: str | None = None, raise_on_error: bool = False) -> None:
        super().__init__(raise_on_error)
        self._config = GPUConfig.resolve(nvml_library=nvml_library, processes=False)

    def _open(self) -> Backend:
        # Never DCGM: a detector runs at start-up and must not wait on nv-hostengine.
        if self._config.backend == "jetson":
            from visiontel.gpu._jetson import JetsonBackend

            return JetsonBackend(self._config.sysfs_root)
        return open_nvml_or_jetson(self._config)

    def detect(self) -> Resource:
        try:
            backend = self._open()
        except BackendUnavailable as exc:
            if self.raise_on_error:
                raise
            _log.info("visiontel-gpu resource detector: no GPU attributes: %s", exc)
            return Resource.get_empty()
        try:
            return Resource(dict(resource_attributes(backend)))
        finally:
            backend.close()
