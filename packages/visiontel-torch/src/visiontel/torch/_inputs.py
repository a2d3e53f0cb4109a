"""Describe a forward's inputs by shape, dtype and device only — never by value."""

from __future__ import annotations

from typing import Any

_MAX_DESCRIBED = 8
_MAX_CACHED = 256
# (shape, dtype, device) of each described tensor -> the attributes they give. A service
# sees a handful of input signatures, and formatting them costs more than the rest of the
# description; the cache is bounded (cleared when full) so odd inputs cannot grow it.
attribute_cache: dict[tuple[Any, ...], dict[str, Any]] = {}


class InputDescription:
    """What a forward's inputs look like. Device and shape are read only when asked for:
    every forward needs the batch size, but only a traced or failed one the rest."""

    __slots__ = ("attributes", "batch_size", "first")

    def __init__(
        self, batch_size: int = 0, first: Any = None, attributes: dict[str, Any] | None = None
    ) -> None:
        self.batch_size, self.first = batch_size, first
        self.attributes = _NONE if attributes is None else attributes

    @property
    def device(self) -> Any:
        return None if self.first is None else self.first.device

    @property
    def on_cuda(self) -> bool:
        """Whether the first input is on a CUDA device (``Tensor.is_cuda``: a flag read,
        where ``.device`` builds a ``torch.device``); duck-typed tensors are asked their
        device."""
        first = self.first
        if first is None:
            return False
        on_cuda = getattr(first, "is_cuda", None)
        if isinstance(on_cuda, bool):
            return on_cuda
        return getattr(first.device, "type", None) == "cuda"

    @property
    def batch_shape(self) -> str | None:
        return None if self.first is None else _shape(self.first)


_NONE: dict[str, Any] = {}


tensor_class: type | None = None
"""``torch.Tensor`` once ``tensor_type()`` has run (an identity test without a call)."""


def tensor_type() -> type:
    """``torch.Tensor``, imported on first use (importing visiontel.torch does not load torch)."""
    global tensor_class
    if tensor_class is None:
        import torch

        tensor_class = torch.Tensor
    return tensor_class


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "device")


def _shape(tensor: Any) -> str:
    return "x".join(str(int(d)) for d in tensor.shape) or "scalar"


def describe_inputs(args: Any, kwargs: Any, detailed: bool) -> InputDescription:
    """Batch size always (it is cheap); shapes, dtypes and device attributes when ``detailed``.

    A list of image tensors (torchvision detection models) counts one image per tensor;
    otherwise the first tensor's leading dimension is the batch size. Several tensors
    (e.g. an RGB and an IR stream) are all described, up to eight. The attribute values
    are tuples: what the SDK stores for a list, so spans take them without a conversion.
    """
    if not kwargs and len(args) == 1 and isinstance(args[0], tensor_type()):
        value: Any = args[0]  # model(images): the usual call, one attribute read when untraced
        shape = value.shape
        batch_size = int(shape[0]) if len(shape) else 0
        if not detailed:
            return InputDescription(batch_size, value)
        key: tuple[Any, ...] = (batch_size, (shape, value.dtype, value.device))
        attributes = attribute_cache.get(key)
        if attributes is None:
            if len(attribute_cache) >= _MAX_CACHED:
                attribute_cache.clear()
            attributes = attribute_cache[key] = _attributes(batch_size, [value])
        return InputDescription(batch_size, value, attributes)
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
    if not tensors:
        return InputDescription(batch_size)
    first = tensors[0]
    if not detailed:
        return InputDescription(batch_size, first)
    described = tensors[:_MAX_DESCRIBED]
    key = (batch_size, *((t.shape, t.dtype, t.device) for t in described))
    attributes = attribute_cache.get(key)
    if attributes is None:
        if len(attribute_cache) >= _MAX_CACHED:
            attribute_cache.clear()
        attributes = attribute_cache[key] = _attributes(batch_size, described)
    return InputDescription(batch_size, first, attributes)  # read-only: the span copies it


def _attributes(batch_size: int, described: list[Any]) -> dict[str, Any]:
    return {
        "visiontel.batch.size": batch_size,
        "visiontel.input.shapes": tuple(_shape(t) for t in described),
        "visiontel.input.dtypes": tuple(str(t.dtype).removeprefix("torch.") for t in described),
        "visiontel.input.device": str(described[0].device),
    }
