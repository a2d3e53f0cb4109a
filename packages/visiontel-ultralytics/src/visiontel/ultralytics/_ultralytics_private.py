"""Every use of Ultralytics internals, in one place, each with a public fall-back.

What is public in Ultralytics: the callback events and ``add_callback``, the module-level
``default_callbacks`` table every new model and predictor copies, and the predictor methods
custom predictors override (``preprocess``, ``inference``, ``postprocess``). What is not:
how ``AutoBackend`` holds the loaded model (changed in 8.4: ``backend.model`` and a
``format`` string instead of ``model`` and one flag per format), and where
``stream_inference`` keeps its ``ops.Profile`` timers (a local variable). Each reader below
tries the layouts of the supported releases and returns ``None`` when none matches, which
the callers treat as "not available" (one warning, nothing touched).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

# AutoBackend's per-format flags before 8.4, in the order it checks them.
_FORMAT_FLAGS = (
    ("pt", "pt"),
    ("nn_module", "pt"),
    ("jit", "torchscript"),
    ("onnx", "onnx"),
    ("xml", "openvino"),
    ("engine", "engine"),
    ("coreml", "coreml"),
    ("saved_model", "saved_model"),
    ("pb", "pb"),
    ("tflite", "tflite"),
    ("edgetpu", "edgetpu"),
    ("tfjs", "tfjs"),
    ("paddle", "paddle"),
    ("mnn", "mnn"),
    ("ncnn", "ncnn"),
    ("imx", "imx"),
    ("rknn", "rknn"),
    ("triton", "triton"),
)
_STREAM_FRAME_DEPTH = 8


def default_callbacks() -> dict[str, list[Any]] | None:
    """The table ``get_default_callbacks()`` copies into every new model and predictor."""
    try:
        from ultralytics.utils.callbacks import base
    except ImportError:
        return None
    table = getattr(base, "default_callbacks", None)
    return table if isinstance(table, dict) else None


def predictor_classes() -> list[type]:
    """``BasePredictor`` and every subclass Ultralytics ships (detect, segment, pose...)."""
    from ultralytics.engine.predictor import BasePredictor

    with contextlib.suppress(ImportError):  # the task packages define their predictors
        import ultralytics.models  # noqa: F401
    found: list[type] = []
    pending: list[type] = [BasePredictor]
    while pending:
        cls = pending.pop()
        if cls not in found:
            found.append(cls)
            pending.extend(cls.__subclasses__())
    return found


def unwrap_compiled(model: Any) -> Any:
    """The module ``torch.compile`` wrapped (predict with ``compile=True``), else ``model``."""
    return getattr(model, "_orig_mod", model)


def backend_format(autobackend: Any) -> str | None:
    """The loaded model's format: pt, torchscript, onnx, openvino, engine, triton..."""
    autobackend = unwrap_compiled(autobackend)
    value = autobackend.__dict__.get("format")
    if isinstance(value, str):
        return value
    for flag, name in _FORMAT_FLAGS:
        if getattr(autobackend, flag, False) is True:
            return name
    return None


def loaded_model(autobackend: Any) -> Any:
    """What AutoBackend calls to run the network: an nn.Module, an ONNX session wrapper..."""
    autobackend = unwrap_compiled(autobackend)
    backend = autobackend.__dict__.get("backend")
    if backend is not None:  # 8.4: one backend object per format
        return getattr(backend, "model", None)
    return getattr(autobackend, "model", None)


def model_source(predictor: Any) -> Any:
    """What the model was loaded from: ``args.model``, or a Triton model's name on the server.

    ``YOLO(url)`` for a Triton model keeps the URL on the ``Model`` alone and leaves the
    predictor's ``args.model`` unset; the ``TritonRemoteModel`` keeps the model's name.
    """
    source = getattr(predictor.args, "model", None)
    if source is None and backend_format(predictor.model) == "triton":
        source = getattr(loaded_model(predictor.model), "endpoint", None)
    return source


def runs_fp16(autobackend: Any) -> bool:
    """Whether the loaded model computes in FP16 (``AutoBackend.fp16`` in both layouts).

    Not ``args.half``: that is a request, which AutoBackend turns down on a CPU, and 8.4
    replaced it with ``quantize`` (``args`` then has no ``half`` at all).
    """
    return getattr(unwrap_compiled(autobackend), "fp16", False) is True


def torch_module(autobackend: Any) -> Any:
    """The eager ``nn.Module`` behind a pt backend, or ``None`` for every other format."""
    if backend_format(autobackend) != "pt":
        return None
    import torch

    model = loaded_model(autobackend)
    return model if isinstance(model, torch.nn.Module) else None


def metadata(autobackend: Any) -> dict[str, Any]:
    """The exported model's or checkpoint's metadata (date, version, names...), or {}."""
    autobackend = unwrap_compiled(autobackend)
    for holder in (autobackend.__dict__.get("backend"), autobackend):
        value = getattr(holder, "metadata", None) if holder is not None else None
        if isinstance(value, dict) and value:
            return value
    return {}


def stream_profilers() -> tuple[Any, ...] | None:
    """The ``ops.Profile`` timers of the ``stream_inference`` run calling us right now.

    They are a local variable of the generator, so the only way to reach them is its frame.
    Called from a callback, that frame is a few levels up the stack.
    """
    frame = sys._getframe(1)
    for _ in range(_STREAM_FRAME_DEPTH):
        if frame is None:
            return None
        if frame.f_code.co_name == "stream_inference":
            profilers = frame.f_locals.get("profilers")
            if isinstance(profilers, tuple) and all(hasattr(p, "time") for p in profilers):
                return profilers
            return None
        frame = frame.f_back  # type: ignore[assignment]
    return None


def disable_profile_sync(profiler: Any) -> bool:
    """Stop one ``ops.Profile`` from synchronising the device; False if its layout is unknown."""
    if "accelerator" in profiler.__dict__:  # 8.4: a torch device module, or None
        profiler.accelerator = None
        return True
    if "cuda" in profiler.__dict__:  # 8.3: a flag
        profiler.cuda = False
        return True
    return False


def in_memory_source(predictor: Any) -> str | None:
    """``"array"`` or ``"tensor"`` when the predictor's input was in memory, else ``None``.

    For numpy, PIL and tensor inputs Ultralytics invents paths (``image0.jpg``): as source
    names they would mislead, and frame numbers over them would restart at every call.
    """
    source_type = getattr(predictor, "source_type", None)
    if getattr(source_type, "tensor", False) is True:
        return "tensor"
    if getattr(source_type, "from_img", False) is True:
        return "array"
    return None


def iter_results_boxes(result: Any) -> Iterator[Any]:
    """The detections container of one ``Results`` (boxes, or oriented boxes for obb)."""
    for name in ("boxes", "obb"):
        boxes = getattr(result, name, None)
        if boxes is not None:
            yield boxes
            return
