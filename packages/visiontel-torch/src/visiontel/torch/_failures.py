"""What a failed forward records: the exception, and for out-of-memory the GPU memory state.

The memory queries (``memory_allocated``, ``memory_reserved``, ``max_memory_allocated``) read
the caching allocator's counters on the host; they do not synchronise the device.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import Span, Status, StatusCode


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    oom_types = tuple(
        t
        for t in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError)
        if isinstance(t, type)
    )
    if isinstance(exc, oom_types):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc)[:300].lower()


def memory_context(device: Any) -> dict[str, int]:
    """Allocator counters of ``device`` (a CUDA ``torch.device``), empty when unavailable."""
    import torch

    if device is None or getattr(device, "type", None) != "cuda":
        return {}
    if not torch.cuda.is_available():
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {
        "visiontel.gpu.device": int(index),
        "visiontel.gpu.memory.allocated": int(torch.cuda.memory_allocated(index)),
        "visiontel.gpu.memory.reserved": int(torch.cuda.memory_reserved(index)),
        "visiontel.gpu.memory.peak": int(torch.cuda.max_memory_allocated(index)),
    }


def record_failure(
    span: Span, exc: BaseException, device: Any, batch_shape: str | None
) -> dict[str, Any]:
    """Mark ``span`` failed; returns the attributes that also go on the duration metric."""
    error_type = type(exc).__qualname__
    attributes: dict[str, Any] = {"error.type": error_type}
    if is_out_of_memory(exc):
        attributes["visiontel.error.out_of_memory"] = True
        attributes.update(memory_context(device))
        if batch_shape:
            attributes["visiontel.batch.shape"] = batch_shape
    if span.is_recording():
        span.set_attributes(attributes)
        span.record_exception(exc, escaped=True)
        span.set_status(Status(StatusCode.ERROR, f"{error_type}: {str(exc)[:200]}"))
    return {"error.type": error_type}
