"""A detector service loop with no OpenTelemetry code in it.

Run it under the agent and the ``torch`` instrumentor traces every forward:

    OTEL_TRACES_EXPORTER=console OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
        opentelemetry-instrument python examples/plain_app.py
"""

from __future__ import annotations

import torch


class SmallDetector(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Conv2d(32, 6, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raw = self.head(self.backbone(images))
        return raw.flatten(2).transpose(1, 2)[0, :10]  # ten N×6 rows


def main() -> None:
    model = SmallDetector().eval()
    with torch.inference_mode():
        for _ in range(3):
            detections = model(torch.randn(1, 3, 64, 64))
    print(f"last frame: {detections.shape[0]} detections")


if __name__ == "__main__":
    main()
