"""``TorchInstrumentor``: the entry point ``opentelemetry-instrument`` loads as ``torch``.

With no code change every model is discovered at its *root* on its first call and
instrumented like ``instrument_model`` would (``_discovery.py`` says how the root is
found). Discovery needs a global forward pre-hook, which takes every module call off
torch's fast path while it is installed. It is removed once no module is left that could
still become a root, and it is put back when a module is built, copied or loaded. A model
that is built but never called keeps it (see the README). Call ``instrument_model``
yourself and set ``VISIONTEL_TORCH_AUTO_DISCOVER=false`` to avoid it entirely.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from visiontel.torch._config import config_from_env
from visiontel.torch._discovery import Discovery
from visiontel.torch._runtime import Runtime, default_runtime, set_default_runtime
from visiontel.torch._torch_private import private_hooks_usable
from visiontel.torch.package import _instruments


class TorchInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instrument PyTorch models for OpenTelemetry.

    ``TorchInstrumentor().instrument(tracer_provider=..., meter_provider=...,
    granularity="layer", auto_discover=True)``; every keyword of ``instrument_model``
    that configures behaviour is accepted and overrides its environment variable.
    """

    # No __init__: BaseInstrumentor is a singleton whose __init__ runs again on every
    # ``TorchInstrumentor()``, so state set there would be forgotten between
    # ``TorchInstrumentor().instrument()`` and ``TorchInstrumentor().uninstrument()``.
    _discovery: Discovery | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        tracer_provider = kwargs.get("tracer_provider")
        meter_provider = kwargs.get("meter_provider")
        if tracer_provider is not None or meter_provider is not None:
            set_default_runtime(Runtime(tracer_provider, meter_provider))
        overrides = {
            key: kwargs.get(key)
            for key in (
                "granularity",
                "layer_depth",
                "include",
                "exclude",
                "max_layer_spans",
                "capture_shapes",
                "auto_discover",
            )
        }
        overrides["model_name"] = kwargs.get("name")
        overrides["model_version"] = kwargs.get("version")
        config = config_from_env().with_overrides(**overrides)
        if config.auto_discover:
            private_hooks_usable()  # decided before the global hook exists: it builds a module
            self._discovery = Discovery(config)

    def _uninstrument(self, **kwargs: Any) -> None:
        discovery, self._discovery = self._discovery, None
        if discovery is not None:
            discovery.close()
        default_runtime().resolver.flush(2.0)
        set_default_runtime(None)
