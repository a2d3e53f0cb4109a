"""Describe a forward's inputs by shape, dtype and device only — never by value."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_MAX_DESCRIBED = 8


@dataclass
class InputDescription:
    batch_size: int = 0
    device: Any = None
    batch_shape: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "device")


def _shape(tensor: Any) -> str:
    return "x".join(str(int(d)) for d in tensor.shape) or "scalar"


def describe_inputs(args: Any, kwargs: Any, detailed: bool) -> InputDescription:
    """Batch size and device always (they are cheap); shapes and dtypes when ``detailed``.

    A list of image tensors (torchvision detection models) counts one image per tensor;
    otherwise the first tensor's leading dimension is the batch size. Several tensors
    (e.g. an RGB and an IR stream) are all described, up to eight.
    """
    tensors: list[Any] = []
    batch_size = 0
    for value in (*args, *(kwargs or {}).values()):
        if _is_tensor(value):
            if not tensors and value.dim() > 0:
                batch_size = int(value.shape[0])
            tensors.append(value)
        elif isinstance(value, (list, tuple)) and value and all(_is_tensor(v) for v in value):
            if not tensors:
                batch_size = len(value)
            tensors.extend(value)
        if len(tensors) >= _MAX_DESCRIBED:
            break
    description = InputDescription(batch_size=batch_size)
    if not tensors:
        return description
    first = tensors[0]
    description.device = first.device
    description.batch_shape = _shape(first)
    if detailed:
        described = tensors[:_MAX_DESCRIBED]
        description.attributes = {
            "visiontel.batch.size": batch_size,
            "visiontel.input.shapes": [_shape(t) for t in described],
            "visiontel.input.dtypes": [str(t.dtype).removeprefix("torch.") for t in described],
            "visiontel.input.device": str(first.device),
        }
    return description
