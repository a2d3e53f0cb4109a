"""The detectors ``visiontel demo --model`` can serve, behind one small interface.

``tinydet`` is the demo's own detector (no extra dependency, ~10 ms per frame on one CPU
core). ``ssdlite`` is torchvision's SSDlite320 / MobileNetV3-Large, the mobile detector
people deploy, built with ``weights=None`` (nothing downloaded) and calibrated so random
weights still give a handful of detections per frame; ~50 ms per frame on one core, which
is where a production CPU detector sits and what the telemetry's share should be read
against (docs/benchmarks.md). Any other name is an Ultralytics YOLO model, built and traced
in ``visiontel.demo._yolo``; only the check before the start goes through here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from visiontel.demo import _model, _yolo
from visiontel.demo._config import MODELS
from visiontel.demo._errors import UsageError
from visiontel.demo._frames import synthetic

_INSTALL_TORCHVISION = '--model ssdlite needs torchvision: pip install "visiontel[torchvision]"'
_SSD_DETECTIONS = 8  # detections per calibration frame a version is tuned to


@dataclass(frozen=True)
class Detector:
    """One model version: its module and how frames go in and detections come out."""

    module: nn.Module
    prepare: Callable[[bytes, int, int, int, torch.device], tuple[Any, float]]
    """Frame bytes to the model's input, and the scale from frame to input pixels."""
    rows: Callable[[Any], torch.Tensor]
    """The model's output for the frame as ``N x 6`` rows (box, score, label)."""


def check(name: str, weights: str | None = None) -> str | None:
    """Fail before any process starts when ``name`` needs a library that is not installed.

    ``name`` itself is checked against ``MODELS`` with the other flags (``_config``); any
    other name is an Ultralytics model, looked up here. Returns a line describing an
    Ultralytics model for the launcher to print, None for the demo's own.
    """
    if name == "ssdlite" and weights is None:
        _torchvision()
    elif weights is not None or name not in MODELS:
        return _yolo.check(name, weights)
    return None


def build(name: str, version: str, device: torch.device) -> Detector:
    if name == "ssdlite":
        return _ssdlite(version, device)
    module = _model.build(version).to(device)
    return Detector(module, _model.preprocess, lambda output: output[0])


def _torchvision() -> Any:
    try:
        from torchvision.models import detection
    except ImportError:
        raise UsageError(_INSTALL_TORCHVISION) from None
    return detection


def _ssdlite(version: str, device: torch.device) -> Detector:
    detection = _torchvision()
    with _model.version_seed(version):
        model = detection.ssdlite320_mobilenet_v3_large(
            weights=None,
            weights_backbone=None,
            num_classes=_model.NUM_CLASSES + 1,  # + background, as torchvision counts
            detections_per_img=_model.MAX_DETECTIONS,
        ).eval()
        # As for tinydet: He init keeps the backbone's features alive through its depth
        # (with torchvision's default init every box scores the same).
        for module in model.backbone.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    _calibrate_ssdlite(model)
    model = model.to(device)

    def rows(output: Any) -> torch.Tensor:
        found = output[0]
        return torch.cat(
            (found["boxes"], found["scores"][:, None], found["labels"][:, None].float()), dim=1
        )

    return Detector(model, _unit_image, rows)


def _unit_image(
    pixels: bytes, width: int, height: int, channels: int, device: torch.device
) -> tuple[list[torch.Tensor], float]:
    """torchvision detectors take a list of 3 x H x W images in [0, 1] and resize them."""
    # boxes come back in frame pixels: scale 1
    return [_model.unit_image(pixels, width, height, channels, device)], 1.0


def _calibrate_ssdlite(model: nn.Module) -> None:
    """Random weights score every box alike: set the threshold so a few pass, as trained."""
    frame = next(synthetic(320, 240))
    image, _ = _unit_image(frame.tobytes(), 320, 240, 3, torch.device("cpu"))
    model.score_thresh = 0.0  # type: ignore[assignment]
    with torch.inference_mode():
        scores = model(image)[0]["scores"]
    if len(scores) <= _SSD_DETECTIONS:
        model.score_thresh = 0.5 * float(scores[-1]) if len(scores) else 0.5  # type: ignore[assignment]
        return
    # Halfway between the last score kept and the first dropped (the model keeps "> thresh").
    threshold = 0.5 * float(scores[_SSD_DETECTIONS - 1] + scores[_SSD_DETECTIONS])
    model.score_thresh = threshold  # type: ignore[assignment]
