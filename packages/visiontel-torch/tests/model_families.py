"""The three model families every lifecycle test runs on, built as their users build them.

* ``plain``: a hand-written torch detector (``torch_support.TinyDetector``);
* ``torchvision``: SSDlite320 / MobileNetV3 from torchvision, ``weights=None``;
* ``ultralytics``: YOLOv8n's ``DetectionModel`` from the yaml bundled with Ultralytics
  (random weights: nothing can be downloaded here).

Each family says how to make an input, how to compare two outputs and how users replace
modules in it (Ultralytics: ``fuse()``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tiny_models import TinyDetector

os.environ.setdefault("YOLO_OFFLINE", "1")  # Ultralytics: no update checks, no downloads
os.environ.setdefault("YOLO_VERBOSE", "false")


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[], torch.nn.Module]
    example: Callable[[], Any]
    replace: Callable[[torch.nn.Module], None]
    """Swap modules the way this family's users do, after instrumentation."""


def _plain() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinyDetector().eval()


def _plain_replace(model: torch.nn.Module) -> None:
    torch.manual_seed(1)
    model.neck = torch.nn.Conv2d(8, 8, 1)


def _torchvision() -> torch.nn.Module:
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)
    return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()


def _torchvision_replace(model: torch.nn.Module) -> None:
    # fold the first BatchNorm into its conv, as deployment tools do
    block = model.backbone.features[0][0]  # type: ignore[index]
    conv, bn = block[0], block[1]
    fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
    block[0], block[1] = fused, torch.nn.Identity()


def _ultralytics() -> torch.nn.Module:
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    return DetectionModel("yolov8n.yaml", verbose=False).eval()


def _ultralytics_replace(model: torch.nn.Module) -> None:
    model.fuse(verbose=False)  # type: ignore[operator]


def _image() -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))


def _image_list() -> list[torch.Tensor]:
    return [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(7))]


FAMILIES = {
    "plain": Family("plain", _plain, _image, _plain_replace),
    "torchvision": Family("torchvision", _torchvision, _image_list, _torchvision_replace),
    "ultralytics": Family("ultralytics", _ultralytics, _image, _ultralytics_replace),
}


def run(model: torch.nn.Module, example: Any) -> Any:
    with torch.no_grad():
        return model(example)


def tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor in an output, in a stable order (dicts by key)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for key in sorted(output) for t in tensors(output[key])]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in tensors(item)]
    return []


def same(a: Any, b: Any) -> bool:
    left, right = tensors(a), tensors(b)
    return len(left) == len(right) > 0 and all(
        x.shape == y.shape and torch.allclose(x.float(), y.float(), atol=1e-5)
        for x, y in zip(left, right, strict=True)
    )
