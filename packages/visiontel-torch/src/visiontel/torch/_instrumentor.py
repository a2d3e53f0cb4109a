"""``TorchInstrumentor``: the entry point ``opentelemetry-instrument`` loads as ``torch``.

With no code change every *root* module forward (a module called while no instrumented
forward is running on that thread, and which has parameters) is discovered on its first
call and instrumented like ``instrument_model`` would. Discovery needs one global forward
pre-hook, which costs a little on every module call (see docs/benchmarks.md); call
``instrument_model`` yourself and set ``VISIONTEL_TORCH_AUTO_DISCOVER=false`` for the
zero-overhead path.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from visiontel.torch import _model
from visiontel.torch._api import instrument_model, uninstrument_model
from visiontel.torch._config import TorchConfig, config_from_env
from visiontel.torch._runtime import Runtime, default_runtime, set_default_runtime
from visiontel.torch._safety import report_internal_error
from visiontel.torch.package import _instruments


class TorchInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instrument PyTorch models for OpenTelemetry.

    ``TorchInstrumentor().instrument(tracer_provider=..., meter_provider=...,
    granularity="layer", auto_discover=True)``; every keyword of ``instrument_model``
    that configures behaviour is accepted and overrides its environment variable.
    """

    def __init__(self) -> None:
        super().__init__()
        self._discovery: Any = None
        self._config: TorchConfig | None = None
        self._rejected: weakref.WeakSet[Any] = weakref.WeakSet()
        self._discovered: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._is_compiling = _model.is_compiling_fn()

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        import torch

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
        self._config = config_from_env().with_overrides(**overrides)
        if self._config.auto_discover:
            register = torch.nn.modules.module.register_module_forward_pre_hook
            self._discovery = register(self._discover)

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._discovery is not None:
            self._discovery.remove()
            self._discovery = None
        for model in list(self._discovered):
            uninstrument_model(model)
        self._discovered = weakref.WeakSet()
        self._rejected = weakref.WeakSet()
        default_runtime().resolver.flush(2.0)
        set_default_runtime(None)

    def _discover(self, module: Any, args: Any) -> None:
        if self._is_compiling() or _model.forward_depth() or getattr(module, "_is_replica", False):
            return
        try:
            if module in self._rejected or _model.instrumentation_of(module) is not None:
                return
            with self._lock:
                if not _is_root_candidate(module):
                    self._rejected.add(module)
                    return
                instrument_model(module, _base_config=self._config)
                self._discovered.add(module)
            instrumentation = _model.instrumentation_of(module)
            if instrumentation is not None:  # this call already passed the root pre-hook
                instrumentation._root_pre(module, args, {})
        except Exception as exc:
            report_internal_error("discovery", exc)


def _is_root_candidate(module: Any) -> bool:
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        return False
    return next(module.parameters(), None) is not None
