"""Describe a forward's inputs by shape, dtype and device only — never by value."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_MAX_DESCRIBED = 8
_MAX_CACHED = 256
# (shape, dtype, device) of each described tensor -> the attributes they give. A service
# sees a handful of input signatures, and formatting them costs more than the rest of the
# description; the cache is bounded (cleared when full) so odd inputs cannot grow it.
_cache: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] = {}


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
    described = tensors[:_MAX_DESCRIBED]
    key = (batch_size, *((t.shape, t.dtype, t.device) for t in described))
    cached = _cache.get(key)
    if cached is None:
        if len(_cache) >= _MAX_CACHED:
            _cache.clear()
        cached = _cache[key] = (_shape(first), _attributes(batch_size, described))
    description.device = first.device
    description.batch_shape = cached[0]
    if detailed:
        description.attributes = cached[1]  # read-only: the span copies it
    return description


def _attributes(batch_size: int, described: list[Any]) -> dict[str, Any]:
    return {
        "visiontel.batch.size": batch_size,
        "visiontel.input.shapes": [_shape(t) for t in described],
        "visiontel.input.dtypes": [str(t.dtype).removeprefix("torch.") for t in described],
        "visiontel.input.device": str(described[0].device),
    }
