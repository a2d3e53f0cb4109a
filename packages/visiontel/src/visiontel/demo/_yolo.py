"""``--model yolov8n``: an Ultralytics YOLO detector, traced by visiontel-ultralytics.

The model is built from the yaml Ultralytics ships (``YOLO("yolov8n.yaml")``: random
weights seeded by the model version, nothing downloaded) or loaded from a checkpoint given
with ``--weights`` (``YOLO(path)``). Every frame is one ``predict`` call made while the
frame's ``detect`` span is current, so visiontel-ultralytics' ``predict yolov8n`` span,
with its ``preprocess``, ``inference`` (the network's spans from visiontel-torch below it)
and ``postprocess`` children, joins the frame's trace.

The launcher only looks Ultralytics up (:func:`check`); it is imported in the detector
process alone, which has torch loaded already.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import pathlib
import re
import sys
from typing import Any

import numpy as np
import torch
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from visiontel.demo._errors import UsageError
from visiontel.demo._model import to_frame, version_seed

INSTALL = 'pip install "visiontel[yolo]"'
IMGSZ = 320
"""Network input side: a 320x240 frame letterboxes to 320x256, a few fps on one CPU core."""
RANDOM_CONF = 1e-4
"""Confidence threshold of models built from yaml.

Ultralytics initialises each class logit to a prior, ``5 / classes / (640 / stride)**2``,
and random weights add next to nothing to it, so every box scores that prior: about 1e-5
at stride 8, 4e-5 at stride 16, 1.6e-4 at stride 32. Ultralytics' default (0.25) keeps
none of them; 1e-4 keeps the stride-32 boxes, which NMS thins to about 16 per frame.
A checkpoint given with ``--weights`` keeps Ultralytics' default.
"""
_EXAMPLES = "yolov8n, yolov8s, yolo11n, yolo26n"
# Ultralytics' own rule (nn/tasks.py, yaml_model_load): the letter after the version
# number is the scale, and the yaml it reads has it removed: yolov8n -> yolov8.yaml.
_SCALE = re.compile(r"(\d+)([nslmx])(.+)?$")


def _package_dir(module: str) -> pathlib.Path | None:
    """Where ``module`` is installed, without importing it (the launcher stays light)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def bundled_yaml(name: str) -> pathlib.Path | None:
    """The model yaml Ultralytics would build ``name`` from, or None; needs Ultralytics."""
    root = _package_dir("ultralytics")
    if root is None:
        return None
    wanted = (f"{name}.yaml", _SCALE.sub(r"\1\3", name) + ".yaml")
    found = {p.name: p for p in (root / "cfg" / "models").rglob("*.yaml")}
    return next((found[w] for w in wanted if w in found), None)


def check(name: str, weights: str | None) -> str:
    """Fail before any process starts on what the detector could not build; else say what
    it will build (a line for the launcher)."""
    if _package_dir("ultralytics") is None or _package_dir("visiontel.ultralytics") is None:
        raise UsageError(
            f"--model {name} runs Ultralytics, which is not installed (with "
            f"visiontel-ultralytics, which traces it): {INSTALL}"
        )
    if weights is not None:
        path = pathlib.Path(weights)
        if not path.exists():
            raise UsageError(
                f"--weights {weights}: no such file: give the path of an Ultralytics "
                "checkpoint (e.g. yolov8n.pt), or leave --weights out to build the model "
                "from Ultralytics' yaml with random weights"
            )
        return f"model {name} from {weights}, imgsz {IMGSZ}"
    yaml = bundled_yaml(name)
    if yaml is None:
        raise UsageError(
            f"unknown model {name!r}: pick one of tinydet, ssdlite, or an Ultralytics YOLO "
            f"model whose yaml ships with Ultralytics ({_EXAMPLES}...), or load a "
            "checkpoint with --weights PATH"
        )
    return (
        f"model {name} from Ultralytics' {yaml.name} (random weights, conf {RANDOM_CONF:g}, "
        f"imgsz {IMGSZ})"
    )


def _ultralytics(name: str) -> tuple[Any, Any]:
    """``ultralytics.YOLO`` and ``instrument_yolo``, imported with stdout kept clean.

    stdout is the detector's line protocol to the launcher, and Ultralytics logs to
    whatever ``sys.stdout`` is when it is imported: redirected here, its log lines (and a
    first run's settings notice) go to the detector's stderr log instead.
    """
    try:
        with contextlib.redirect_stdout(sys.stderr):
            # ``ultralytics.YOLO``, the public name, which its package does not re-export
            # for type checkers.
            yolo = importlib.import_module("ultralytics").YOLO
        from visiontel.ultralytics import instrument_yolo
    except ImportError as exc:
        raise UsageError(f"--model {name} needs Ultralytics ({exc}): {INSTALL}") from None
    return yolo, instrument_yolo


def _rows(result: Any) -> torch.Tensor:
    """One image's detections as ``N x 6`` rows (x1, y1, x2, y2, score, class), frame pixels.

    ``boxes`` for detect/segment/pose models, ``obb`` (its axis-aligned box) for oriented
    ones; a classifier has neither and detects nothing. Not ``boxes.data``: it has a
    seventh column (the track id) under ``track()``.
    """
    boxes = result.boxes if result.boxes is not None else getattr(result, "obb", None)
    if boxes is None:
        return torch.zeros((0, 6))
    return torch.cat((boxes.xyxy, boxes.conf[:, None], boxes.cls[:, None].float()), dim=1)


class YoloDetector:
    """One model version: frame bytes in, detections (float32 ``N x 6`` bytes) out."""

    def __init__(self, model: Any, device: torch.device, conf: float | None) -> None:
        self.model = model
        self._args: dict[str, Any] = {"imgsz": IMGSZ, "device": str(device), "verbose": False}
        if conf is not None:
            self._args["conf"] = conf

    def detect(self, pixels: bytes, width: int, height: int, channels: int) -> bytes:
        image = np.frombuffer(pixels, np.uint8).reshape(height, width, channels)
        if channels == 1:
            image = np.repeat(image, 3, axis=2)
        # Ultralytics takes arrays the way OpenCV reads them: BGR.
        bgr = np.ascontiguousarray(image[..., 2::-1])
        result = self.model.predict(bgr, **self._args)[0]
        return to_frame(_rows(result), 1.0, width, height)


def build(
    name: str,
    version: str,
    weights: str | None,
    device: torch.device,
    size: tuple[int, int],
) -> YoloDetector:
    """The model, warmed up on a blank ``size`` frame (not traced: it is no frame's)."""
    YOLO, _ = _ultralytics(name)
    try:
        if weights is None:
            with version_seed(version):  # reproducible, and versions differ, as for tinydet
                model = YOLO(f"{name}.yaml")
            detector = YoloDetector(model, device, RANDOM_CONF)
        else:
            model = YOLO(weights)
            detector = YoloDetector(model, device, None)
        # The first predict sets up the predictor and imports torchvision (seconds): done
        # here, before READY, so that the first frame is not the one that pays for it.
        # Ultralytics loads formats other than .pt here, so a bad file fails here too.
        width, height = size
        detector.detect(bytes(width * height * 3), width, height, 3)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(_build_error(name, weights, exc)) from None
    return detector


def _build_error(name: str, weights: str | None, exc: Exception) -> str:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    # Ultralytics starts some messages with its own log prefix ("ERROR ❌️ ...").
    reason = re.sub(r"^ERROR\W*", "", reason)[:240]
    if weights is not None:
        return (
            f"--weights {weights} is not a model Ultralytics can load ({reason}): give a "
            "checkpoint saved by Ultralytics (e.g. yolov8n.pt), or leave --weights out to "
            "build the model from Ultralytics' yaml with random weights"
        )
    return (
        f"Ultralytics cannot build --model {name} from its yaml ({reason}): pick a "
        f"detection model ({_EXAMPLES}...)"
    )


def instrument(
    detector: YoloDetector,
    name: str,
    version: str,
    tracer_provider: TracerProvider | None,
    meter_provider: MeterProvider | None,
) -> None:
    _, instrument_yolo = _ultralytics(name)
    instrument_yolo(
        detector.model,
        name=name,
        version=version,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
