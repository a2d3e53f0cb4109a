"""The predictor callbacks and the stage timers, and how they are put in place.

Only ``on_predict_start`` is registered from outside (in Ultralytics' default callback table
for zero-code use, or on one model by ``instrument_yolo``). When it runs, it puts the other
callbacks into that predictor's table exactly once, in the places they need: the tracker
timers first and last among the ``on_predict_postprocess_end`` callbacks, around the
tracker's own.

Stages are timed by wrapping ``preprocess``, ``inference`` and ``postprocess`` where each
predictor class defines them. A wrapper passes straight through for a predictor that has no
run registered, so a class patched for one instrumented model costs others nothing but a
dictionary lookup.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import wrapt

from visiontel.torch import instrument_model
from visiontel.torch._model import instrumentation_of
from visiontel.torch._safety import report_internal_error, warn_once
from visiontel.ultralytics import _triton, _ultralytics_private
from visiontel.ultralytics._config import UltralyticsConfig
from visiontel.ultralytics._run import PredictRun, Telemetry

_logger = logging.getLogger("visiontel.ultralytics")
_STAGE_METHODS = ("preprocess", "inference", "postprocess")

_runs: weakref.WeakKeyDictionary[Any, PredictRun] = weakref.WeakKeyDictionary()
_last_runs: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], PredictRun]] = (
    weakref.WeakKeyDictionary()
)
_patched_classes: set[type] = set()  # done: each class and its bases
_patched: dict[tuple[type, str], Any] = {}  # (class, method name) -> the original function
_lock = threading.Lock()


class Settings:
    """What ``on_predict_start`` needs: configuration and where telemetry goes."""

    def __init__(self, config: UltralyticsConfig, telemetry: Telemetry) -> None:
        self.config = config
        self.telemetry = telemetry
        self.enabled = True

    # ``instrument_yolo`` puts these in the model's callback table, which copy.deepcopy and
    # pickle (a model sent to a worker) take along. The telemetry holds locks and a thread,
    # so it is never copied: a copy in this process shares it, and an unpickled one is
    # rebuilt on the global providers (explicit providers cannot leave the process).
    def __copy__(self) -> Settings:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Settings:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle_settings, (self.config, self.enabled))


def _unpickle_settings(config: UltralyticsConfig, enabled: bool) -> Settings:
    settings = Settings(config, Telemetry(None, None))
    settings.enabled = enabled
    return settings


def start_run(predictor: Any, settings: Settings) -> None:
    """The body of every ``on_predict_start`` callback of ours."""
    if not settings.enabled:
        return
    try:
        _start_run(predictor, settings)
    except Exception as exc:
        report_internal_error("ultralytics on_predict_start", exc)


def _start_run(predictor: Any, settings: Settings) -> None:
    previous = _runs.pop(predictor, None)
    if previous is not None:
        previous.abort(None)
    config = settings.config
    patch_predictor_class(type(predictor))
    _place_callbacks(predictor.callbacks)
    torch_traced = _trace_network(predictor, config, settings)
    if config.triton_headers:
        _triton.inject_headers(predictor.model)
    if config.sync_free_profile:
        _free_profilers_from_sync()
    # Building a run (attributes, class labels, stage timers) costs tens of microseconds; a
    # service calling predict() once per frame reuses the last one while nothing changed.
    key = _run_key(predictor, settings, torch_traced)
    cached = _last_runs.get(predictor)
    if cached is not None and cached[0] == key:
        run = cached[1]
        run.reset()
    else:
        run = PredictRun(predictor, config, settings.telemetry, torch_traced)
        _last_runs[predictor] = (key, run)
    _runs[predictor] = run


def _run_key(predictor: Any, settings: Settings, torch_traced: bool) -> tuple[Any, ...]:
    args = predictor.args
    imgsz = getattr(predictor, "imgsz", None)
    return (
        settings,  # the object, not its id: a freed one's id can be reused
        id(predictor.model),
        torch_traced,
        str(getattr(predictor, "device", None)),
        tuple(imgsz) if isinstance(imgsz, (list, tuple)) else imgsz,
        *(str(getattr(args, name, None)) for name in ("model", "mode", "task", "half")),
    )


def _trace_network(predictor: Any, config: UltralyticsConfig, settings: Settings) -> bool:
    """Instrument the eager network under a pt backend; True if its forwards are traced."""
    module = _ultralytics_private.torch_module(predictor.model)
    if module is None or not config.torch_spans:
        return False
    existing = instrumentation_of(module)
    if existing is None or _discovered_unnamed(existing):
        from visiontel.ultralytics._run import model_stem

        args = predictor.args
        metadata = _ultralytics_private.metadata(predictor.model)
        version = config.model_version or metadata.get("date")
        instrument_model(
            module,
            name=config.model_name or model_stem(getattr(args, "model", None)),
            version=str(version) if version else None,
            tracer_provider=settings.telemetry.tracer_provider,
            meter_provider=settings.telemetry.meter_provider,
            _base_config=existing.config if existing is not None else None,
        )
        renamed = instrumentation_of(module)
        if existing is not None and renamed is not None:  # still a discovered root
            renamed.on_nested = existing.on_nested
    return True


def _discovered_unnamed(instrumentation: Any) -> bool:
    """Found by visiontel-torch's zero-code discovery on an earlier forward (``yolo predict``
    counts the model's FLOPs first) and so named after its class, ``DetectionModel``."""
    return instrumentation.on_nested is not None and instrumentation.config.model_name is None


def _free_profilers_from_sync() -> None:
    profilers = _ultralytics_private.stream_profilers()
    if profilers is None or not all(
        _ultralytics_private.disable_profile_sync(p) for p in profilers
    ):
        warn_once(
            "ultralytics.sync_free",
            "visiontel-ultralytics: VISIONTEL_ULTRALYTICS_SYNC_FREE_PROFILE is set, but this "
            "Ultralytics release keeps its stage timers where visiontel cannot find them; "
            "its timing still synchronises the device",
        )


# -- the callbacks on_predict_start puts in place ----------------------------------------
def _guarded(run: PredictRun | None, site: str, action: Callable[[PredictRun], None]) -> None:
    """``action(run)`` for a predictor with a run; a failure of ours is reported, never raised."""
    if run is None:
        return
    try:
        action(run)
    except Exception as exc:
        report_internal_error(f"ultralytics {site}", exc)


def _on_batch_start(predictor: Any) -> None:
    _guarded(_runs.get(predictor), "on_predict_batch_start", lambda r: r.begin_batch(predictor))


def _before_postprocess_callbacks(predictor: Any) -> None:
    run = _runs.get(predictor)
    # A predictor that ran track() keeps its trackers for a later predict() on the same
    # model; the tracker callbacks then return at once (as Ultralytics' own checks the mode)
    if run is not None and run.mode == "track" and hasattr(predictor, "trackers"):
        _guarded(run, "tracker start", lambda r: r.tracker_started())


def _after_postprocess_callbacks(predictor: Any) -> None:
    _guarded(_runs.get(predictor), "tracker end", lambda r: r.tracker_ended())


def _on_batch_end(predictor: Any) -> None:
    _guarded(_runs.get(predictor), "on_predict_batch_end", lambda r: r.end_batch(predictor))


def _on_predict_end(predictor: Any) -> None:
    # a batch still open here was cut short
    _guarded(_runs.pop(predictor, None), "on_predict_end", lambda r: r.abort(None))


_PLACED = (
    ("on_predict_batch_start", _on_batch_start, False),
    ("on_predict_postprocess_end", _before_postprocess_callbacks, True),
    ("on_predict_postprocess_end", _after_postprocess_callbacks, False),
    ("on_predict_batch_end", _on_batch_end, False),
    ("on_predict_end", _on_predict_end, False),
)


def _place_callbacks(table: Any) -> None:
    if all(  # already in place (every predict after the first): a few lookups
        (callbacks := table.get(event)) and callbacks[0 if first else -1] is callback
        for event, callback, first in _PLACED
    ):
        return
    for event, callback, first in _PLACED:
        callbacks = table[event]
        while callback in callbacks:
            callbacks.remove(callback)
        if first:
            callbacks.insert(0, callback)
        else:
            callbacks.append(callback)


def remove_placed_callbacks(table: Any) -> None:
    for event, callback, _ in _PLACED:
        callbacks = table.get(event, [])
        while callback in callbacks:
            callbacks.remove(callback)


# -- stage timers ----------------------------------------------------------------------------
def _stage_wrapper(name: str) -> Any:
    def timed(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        run = _runs.get(instance) if instance is not None else None
        if run is None:
            return wrapped(*args, **kwargs)
        return run.run_stage(name, wrapped, args, kwargs)

    return timed


_WRAPPERS = {name: _stage_wrapper(name) for name in _STAGE_METHODS}


def patch_predictor_class(cls: type) -> None:
    """Time the stages of ``cls`` and of every class it inherits them from."""
    if cls in _patched_classes:
        return
    _patched_classes.add(cls)
    for klass in cls.__mro__:
        for name in _STAGE_METHODS:
            original = klass.__dict__.get(name)
            if original is None or isinstance(original, wrapt.FunctionWrapper):
                continue
            with _lock:
                if (klass, name) in _patched:
                    continue
                _patched[(klass, name)] = original
                setattr(klass, name, wrapt.FunctionWrapper(original, _WRAPPERS[name]))


def unpatch_all() -> None:
    with _lock:
        patched = list(_patched.items())
        _patched.clear()
        _patched_classes.clear()
    for (klass, name), original in patched:
        if isinstance(klass.__dict__.get(name), wrapt.FunctionWrapper):
            setattr(klass, name, original)


def clear_runs() -> None:
    for run in list(_runs.values()):
        run.abort(None)
    _runs.clear()
    _last_runs.clear()
