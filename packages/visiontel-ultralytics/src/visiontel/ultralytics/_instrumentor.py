"""``UltralyticsInstrumentor`` (the ``ultralytics`` entry point) and ``instrument_yolo``."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Collection
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.dependencies import get_dependency_conflicts
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from visiontel.torch import flush as vt_flush
from visiontel.torch._safety import warn_once
from visiontel.ultralytics import _callbacks, _metrics, _ultralytics_private
from visiontel.ultralytics._config import UltralyticsConfig, config_from_env
from visiontel.ultralytics._run import Telemetry
from visiontel.ultralytics.package import _instruments

_logger = logging.getLogger("visiontel.ultralytics")
_CONFIG_KEYWORDS = (
    "top_classes",
    "classes",
    "class_metrics",
    "max_confidences",
    "torch_spans",
    "sync_free_profile",
    "triton_headers",
)

# The settings of the zero-code instrumentation; read by the default-table callback.
_global: _callbacks.Settings | None = None


def on_predict_start(predictor: Any) -> None:
    """The callback ``UltralyticsInstrumentor`` adds to every new model's table."""
    if _global is not None:
        _callbacks.start_run(predictor, _global)


def _supported() -> bool:
    """True if an Ultralytics release this package supports is installed; warns once if not."""
    conflict = get_dependency_conflicts(list(_instruments))
    if conflict is None:
        return True
    if getattr(conflict, "found", None):  # installed, but a release we do not support
        warn_once(
            "ultralytics.version",
            "visiontel-ultralytics: %s; Ultralytics is left untouched "
            "(install a supported release, or uninstall visiontel-ultralytics)",
            conflict,
        )
    return False


class UltralyticsInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Trace every Ultralytics ``predict``/``track`` of models created after ``instrument()``.

    ``UltralyticsInstrumentor().instrument(tracer_provider=..., meter_provider=...,
    top_classes=20, sync_free_profile=True)``: the keywords of :func:`instrument_yolo`,
    overriding the ``VISIONTEL_ULTRALYTICS_*`` variables. Models created before
    ``instrument()`` keep their callback table: instrument those with :func:`instrument_yolo`.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        # Checked in _instrument instead: BaseInstrumentor would skip an unsupported
        # release with a debug line only, and users must hear about it once.
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        global _global
        if not _supported():
            return
        table = _ultralytics_private.default_callbacks()
        if table is None or "on_predict_start" not in table:
            warn_once(
                "ultralytics.layout",
                "visiontel-ultralytics: this Ultralytics release has no default callback "
                "table; it is left untouched",
            )
            return
        tracer_provider = kwargs.get("tracer_provider")
        meter_provider = kwargs.get("meter_provider")
        overrides = {key: kwargs.get(key) for key in _CONFIG_KEYWORDS}
        config = config_from_env().with_overrides(
            model_name=kwargs.get("name"), model_version=kwargs.get("version"), **overrides
        )
        _global = _callbacks.Settings(config, Telemetry(tracer_provider, meter_provider))
        for cls in _ultralytics_private.predictor_classes():
            _callbacks.patch_predictor_class(cls)
        if on_predict_start not in table["on_predict_start"]:
            table["on_predict_start"].append(on_predict_start)

    def _uninstrument(self, **kwargs: Any) -> None:
        global _global
        table = _ultralytics_private.default_callbacks()
        if table is not None:
            while on_predict_start in table.get("on_predict_start", []):
                table["on_predict_start"].remove(on_predict_start)
        if _global is not None:
            _global.enabled = False  # models created meanwhile still hold the callback
        _global = None
        _callbacks.clear_runs()
        _callbacks.unpatch_all()


def instrument_yolo(
    model: Any,
    *,
    name: str | None = None,
    version: str | None = None,
    top_classes: int | None = None,
    classes: list[str] | tuple[str, ...] | str | None = None,
    class_metrics: bool | None = None,
    max_confidences: int | None = None,
    torch_spans: bool | None = None,
    sync_free_profile: bool | None = None,
    triton_headers: bool | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Any:
    """Trace ``predict``/``track``/``model(...)`` of one Ultralytics model; returns it.

    ``model`` is an ``ultralytics.YOLO`` (any ``ultralytics.engine.model.Model``). Arguments
    left as ``None`` take their ``VISIONTEL_ULTRALYTICS_*`` default. Instrumenting again
    replaces the previous settings.
    """
    callbacks = getattr(model, "callbacks", None)
    if not hasattr(model, "add_callback") or not isinstance(callbacks, dict):
        raise TypeError(
            "instrument_yolo expects an Ultralytics model (ultralytics.YOLO(...)); got "
            f"{type(model).__name__}. For a plain torch.nn.Module use "
            "visiontel.torch.instrument_model"
        )
    config: UltralyticsConfig = config_from_env().with_overrides(
        model_name=name,
        model_version=version,
        top_classes=top_classes,
        classes=classes,
        class_metrics=class_metrics,
        max_confidences=max_confidences,
        torch_spans=torch_spans,
        sync_free_profile=sync_free_profile,
        triton_headers=triton_headers,
    )
    uninstrument_yolo(model)
    settings = _callbacks.Settings(config, Telemetry(tracer_provider, meter_provider))
    model.add_callback(
        "on_predict_start", functools.partial(_callbacks.start_run, settings=settings)
    )
    predictor = getattr(model, "predictor", None)
    if predictor is not None:  # a predictor that already exists shares the table
        _callbacks.patch_predictor_class(type(predictor))
    return model


def uninstrument_yolo(model: Any) -> bool:
    """Remove what ``instrument_yolo`` added to ``model``; False if there was nothing."""
    callbacks = getattr(model, "callbacks", None)
    if not isinstance(callbacks, dict):
        return False
    starts = callbacks.get("on_predict_start", [])
    ours = [
        c for c in starts if isinstance(c, functools.partial) and c.func is _callbacks.start_run
    ]
    for callback in ours:
        callback.keywords["settings"].enabled = False
        starts.remove(callback)
    if ours:
        _callbacks.remove_placed_callbacks(callbacks)
    return bool(ours)


def flush(timeout: float = 10.0) -> bool:
    """Wait until every finished image is in the providers: its spans (visiontel-torch's
    resolver) and its metrics (recorded off the inference thread). Call before shutting
    the providers down; True if everything was done within ``timeout``."""
    deadline = time.monotonic() + timeout
    done = vt_flush(timeout)
    return _metrics.worker().flush(max(0.0, deadline - time.monotonic())) and done
