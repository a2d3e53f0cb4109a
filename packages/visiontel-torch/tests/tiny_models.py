"""Plain models with no visiontel import, so that their pickles load anywhere."""

from __future__ import annotations

import torch


class TinyDetector(torch.nn.Module):
    """backbone -> neck -> head, returning torchvision-style detections per image."""

    def __init__(self, boxes_per_image: int = 3) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
            torch.nn.ReLU(),
        )
        self.neck = torch.nn.Conv2d(8, 8, 1)
        self.head = torch.nn.Conv2d(8, 6, 1)
        self.boxes_per_image = boxes_per_image

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        features = self.head(self.neck(self.backbone(images)))
        flat = features.flatten(2).transpose(1, 2)[:, : self.boxes_per_image]
        return [
            {"boxes": f[:, :4], "scores": f[:, 4].sigmoid(), "labels": f[:, 5].long()} for f in flat
        ]
