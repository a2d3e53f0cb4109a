"""The demo's detector: a small single-shot CNN with random weights, built here.

Shaped like the detectors people deploy (backbone, neck, dense head, decode, NMS) so the
spans and metrics look like theirs, small enough to run at tens of frames per second on
one CPU core. The weights come from a seed, so a "model version" is reproducible and two
versions (stable and canary) really are different models. Nothing is downloaded.

NMS is the last child module of the forward, as in torchvision's detection models, so the
model returns final ``N x 6`` rows per image and ``visiontel.inference.detections`` counts
what a user would see.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from visiontel.demo._frames import synthetic

NUM_CLASSES = 4
STRIDE = 16
MAX_DETECTIONS = 32
MAX_SIDE = 640
_CANDIDATES = 128  # highest-scoring cells kept for NMS
_SCORE_THRESHOLD = 0.3
_HEAD_STD = 0.06
_PASSING = 0.97  # quantile of calibration cells at the threshold
_IOU_THRESHOLD = 0.5
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU()
    )


class Backbone(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(_conv(3, 16, 2), _conv(16, 32, 2), _conv(32, 64, 2), _conv(64, 96, 2))


class Neck(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = _conv(96, 96, 1)
        self.context = nn.Conv2d(96, 96, 5, 1, 2, groups=96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed: torch.Tensor = self.mix(x) + self.context(x)
        return mixed


class Head(nn.Module):
    """Per cell: objectness, four box offsets (in cells), class logits; decoded to boxes."""

    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Conv2d(96, 5 + NUM_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.out(x)  # B x (5 + C) x H x W
        batch, _, height, width = raw.shape
        ys, xs = torch.meshgrid(
            torch.arange(height, device=x.device), torch.arange(width, device=x.device),
            indexing="ij",
        )  # fmt: skip
        cx = (xs + 0.5 + raw[:, 1].tanh()) * STRIDE
        cy = (ys + 0.5 + raw[:, 2].tanh()) * STRIDE
        half_w = raw[:, 3].exp().clamp(max=8.0) * STRIDE
        half_h = raw[:, 4].exp().clamp(max=8.0) * STRIDE
        label = raw[:, 5:].argmax(dim=1)
        score = raw[:, 0].sigmoid()
        rows = torch.stack(
            (cx - half_w, cy - half_h, cx + half_w, cy + half_h, score, label.float()), dim=-1
        )
        return rows.view(batch, height * width, 6)  # B x cells x 6, not yet filtered


def _iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    top_left = torch.maximum(box[:2], boxes[:, :2])
    bottom_right = torch.minimum(box[2:4], boxes[:, 2:4])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    area = (box[2:4] - box[:2]).prod()
    areas = (boxes[:, 2:4] - boxes[:, :2]).prod(dim=1)
    return inter / (area + areas - inter + 1e-6)


class NMS(nn.Module):
    """Score threshold, top-k, then greedy class-aware non-maximum suppression."""

    def __init__(self) -> None:
        super().__init__()
        self.score_threshold = _SCORE_THRESHOLD  # an attribute: --canary-fault lowers it

    def forward(self, rows: torch.Tensor) -> list[torch.Tensor]:
        kept: list[torch.Tensor] = []
        for image in rows:
            passing = image[image[:, 4] >= self.score_threshold]
            order = passing[:, 4].argsort(descending=True)[:_CANDIDATES]
            candidates = passing[order]
            # Offsetting each class far apart makes one IoU pass class-aware.
            shifted = candidates[:, :4] + candidates[:, 5:6] * 1e4
            keep: list[int] = []
            alive = torch.ones(len(candidates), dtype=torch.bool)
            for index in range(len(candidates)):
                if not alive[index]:
                    continue
                keep.append(index)
                if len(keep) == MAX_DETECTIONS:
                    break
                alive &= _iou(shifted[index], shifted) < _IOU_THRESHOLD
            kept.append(candidates[keep])
        return kept


class TinyDetector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.neck = Neck()
        self.head = Head()
        self.nms = NMS()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        detections: list[torch.Tensor] = self.nms(self.head(self.neck(self.backbone(images))))
        return detections


@contextlib.contextmanager
def version_seed(version: str) -> Iterator[None]:
    """torch's global generator seeded from ``version`` in the block, restored after it."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(zlib.crc32(version.encode()))
    try:
        yield
    finally:
        torch.random.set_rng_state(generator_state)


def build(version: str) -> TinyDetector:
    """A detector whose random weights depend only on ``version``."""
    with version_seed(version):
        model = TinyDetector().eval()
        for module in model.modules():
            # He init keeps the activations' spatial variance through the layers, so
            # the head's scores follow the image (PyTorch's default init flattens them).
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.uniform_(-0.05, 0.05)
                module.running_var.uniform_(0.9, 1.1)
        nn.init.normal_(model.head.out.weight, std=_HEAD_STD)
        _calibrate(model)
    return model


def _calibrate(model: TinyDetector) -> None:
    """Shift the objectness bias so a few percent of cells pass the threshold.

    Random weights put the score distribution anywhere; calibrating on the first
    synthetic frame gives every version a handful of detections per frame, as a trained
    detector has.
    """
    frame = next(synthetic(320, 240))
    image, _ = preprocess(frame.tobytes(), 320, 240, 3)
    with torch.no_grad():
        logits = model.head.out(model.neck(model.backbone(image)))[:, 0]
        target = torch.logit(torch.tensor(_SCORE_THRESHOLD))
        bias = model.head.out.bias
        assert bias is not None
        bias[0] += target - torch.quantile(logits.flatten(), _PASSING)


def unit_image(
    pixels: bytes, width: int, height: int, channels: int, device: torch.device | None = None
) -> torch.Tensor:
    """HWC uint8 RGB (or grey) bytes to a 3 x H x W float tensor in [0, 1] on ``device``."""
    image = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).view(height, width, channels)
    if channels == 1:
        image = image.expand(height, width, 3)
    return image[..., :3].permute(2, 0, 1).to(device).float().div_(255.0)


def preprocess(
    pixels: bytes, width: int, height: int, channels: int, device: torch.device | None = None
) -> tuple[torch.Tensor, float]:
    """HWC uint8 RGB bytes to a normalised 1 x 3 x H x W float tensor, and its scale.

    Frames with a side over :data:`MAX_SIDE` are scaled down (the model is small).
    """
    tensor = unit_image(pixels, width, height, channels, device).unsqueeze(0)
    scale = min(1.0, MAX_SIDE / max(width, height))
    if scale < 1.0:
        tensor = F.interpolate(tensor, scale_factor=scale, mode="bilinear", antialias=True)
    return (tensor - _MEAN.to(tensor.device)) / _STD.to(tensor.device), scale


def to_frame(rows: torch.Tensor, scale: float, width: int, height: int) -> bytes:
    """Detections in frame pixels, clipped to the frame, as float32 bytes (N x 6)."""
    rows = rows.detach().float().cpu().clone()
    rows[:, :4] /= scale
    rows[:, 0::2][:, :2].clamp_(0, width)
    rows[:, 1::2][:, :2].clamp_(0, height)
    return rows.contiguous().numpy().tobytes()
