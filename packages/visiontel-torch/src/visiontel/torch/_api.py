"""The explicit API: instrument one model, remove it, flush pending spans."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from opentelemetry import metrics, trace

from visiontel.torch import _model
from visiontel.torch._config import Granularity, TorchConfig, config_from_env
from visiontel.torch._metrics import DetectionCounter
from visiontel.torch._runtime import all_runtimes, runtime_for
from visiontel.torch._timing import EventSource

M = TypeVar("M")


def _check_model(model: Any) -> None:
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"instrument_model expects a torch.nn.Module, got {type(model).__name__}; "
            "wrap plain functions with visiontel.torch.stage() instead"
        )
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            "TorchScript modules do not run Python hooks; instrument the eager model before "
            "scripting it, or time the call with visiontel.torch.stage()"
        )


def instrument_model(
    model: M,
    *,
    name: str | None = None,
    version: str | None = None,
    granularity: Granularity | str | None = None,
    layer_depth: int | None = None,
    include: str | list[str] | tuple[str, ...] | None = None,
    exclude: str | list[str] | tuple[str, ...] | None = None,
    max_layer_spans: int | None = None,
    capture_shapes: bool | None = None,
    detections: DetectionCounter | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    _event_source: EventSource | None = None,
    _base_config: TorchConfig | None = None,
) -> M:
    """Trace every forward of ``model`` and record inference metrics; returns ``model``.

    Arguments left as ``None`` take their ``VISIONTEL_TORCH_*`` environment default.
    ``detections`` maps the model output to detections per image (default: torchvision
    detection dicts, ``boxes`` attributes, ``N×6`` tensors). Instrumenting an instrumented
    model replaces the previous settings.
    """
    _check_model(model)
    config = (_base_config or config_from_env()).with_overrides(
        model_name=name,
        model_version=version,
        granularity=granularity,
        layer_depth=layer_depth,
        include=include,
        exclude=exclude,
        max_layer_spans=max_layer_spans,
        capture_shapes=capture_shapes,
    )
    runtime = runtime_for(tracer_provider, meter_provider)
    uninstrument_model(model)
    instrumentation = _model.ModelInstrumentation(
        model, config, runtime, detections=detections, event_source=_event_source
    )
    _model.register(model, instrumentation)
    return model


def uninstrument_model(model: Any) -> bool:
    """Remove every hook visiontel put on ``model``; False if it was not instrumented."""
    instrumentation = _model.unregister(model)
    if instrumentation is None:
        return False
    instrumentation.remove()
    return True


def is_instrumented(model: Any) -> bool:
    return _model.instrumentation_of(model) is not None


def flush(timeout: float = 10.0) -> bool:
    """Wait until every finished forward has become spans (tests, shutdown); True if done
    within ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    # Every runtime a model or a stage can be using (all_runtimes lists replaced ones while
    # they are in use), without making the default one: a resolver serving several is
    # flushed once.
    resolvers = {id(runtime.resolver): runtime.resolver for runtime in all_runtimes()}
    done = True
    for resolver in resolvers.values():
        done = resolver.flush(max(0.0, deadline - time.monotonic())) and done
    return done
