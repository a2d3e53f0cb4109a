"""What the hooks write during one root forward: a flat list of stamps, nothing more."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import Span, Tracer

from visiontel.torch import _compiled
from visiontel.torch._timing import EventSource, GpuEvent

Stamp = tuple[int, int, "GpuEvent | None"]
"""(module index, ``perf_counter_ns``, optional GPU event). A post stamp stores ``~index``."""


@dataclass(frozen=True)
class ModuleTable:
    """Names of the modules that may be stamped, indexed by their hook's index."""

    names: tuple[str, ...]
    classes: tuple[str, ...]
    model_name: str
    budget: int
    gpu_timeout_s: float = 10.0
    """How long the resolver waits for a forward's CUDA events (VISIONTEL_TORCH_GPU_TIMEOUT)."""


@dataclass(eq=False, slots=True)
class ForwardRecord:
    table: ModuleTable
    tracer: Tracer
    span: Span
    perf_start_ns: int
    wall_start_ns: int
    stamps: list[Stamp] | None
    events: EventSource | None = None
    start_event: GpuEvent | None = None
    end_event: GpuEvent | None = None
    perf_end_ns: int = 0
    batch_size: int = 0
    inputs: Any = None
    """The forward's ``InputDescription``, or a dropped forward's first input (device and
    shape read only on failure)."""
    context_token: object = None
    containers_open: int = 0
    """Stage containers on trial (_tree.py) running now: their elements do not stamp."""
    probes: Any = None
    """The ChildProbes this forward armed (a rebuild may replace the model's meanwhile)."""
    previous: ForwardRecord | None = None

    def wall_ns(self, perf_ns: int) -> int:
        """Map a ``perf_counter_ns`` stamp onto the wall clock of the root span."""
        return self.wall_start_ns + (perf_ns - self.perf_start_ns)

    def gpu_events(self) -> list[GpuEvent]:
        events = [stamp[2] for stamp in self.stamps or () if stamp[2] is not None]
        for event in (self.start_event, self.end_event):
            if event is not None:
                events.append(event)
        return events


def record_type() -> type[ForwardRecord]:
    """``ForwardRecord``, or its compiled twin (csrc/record.c) where the compiled loops run:
    the same fields, constructor and methods, made and read without a Python frame (the
    dataclass's ``__init__`` was most of a dropped forward's work in the compiled hooks)."""
    compiled = _compiled.speedups
    return ForwardRecord if compiled is None else compiled.ForwardRecord
