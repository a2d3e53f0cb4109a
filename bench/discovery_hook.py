"""What discovery's global forward pre-hook costs a YOLOv8n ``predict`` loop, and whether it
goes away in the zero-code setup where a model is built and never called.

    nox -s bench -- discovery_hook      # or: python bench/discovery_hook.py

``TorchInstrumentor`` (zero-code discovery) is on, then ``YOLO("yolov8n.yaml")`` predicts
320x320 frames on the CPU, one thread, nothing sampled. Ultralytics' predictor calls a copy
of the network, so the original ``YOLO(...).model`` is built and never called: before
discovery parked such modules, it kept the global hook, and every module call in the
process left torch's fast path for good.

The script reports whether the global hook is still there after three seconds of steady
frames, then alternates blocks of frames with and without discovery's own hook function
registered as a global pre-hook (the same function, in the same process), so the ratio is
the hook's cost, whatever the rest of the telemetry costs.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from typing import Any

import numpy as np
import torch
from _paired import print_paired_table
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from torch_overhead import discovery_hook_registered

from visiontel.torch import TorchInstrumentor
from visiontel.torch._discovery import Discovery


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--block", type=int, default=3, help="frames per timed block")
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    torch.set_num_threads(1)
    tracer_provider = TracerProvider(sampler=ALWAYS_OFF)
    tracer_provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    instrumentor = TorchInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    from ultralytics import YOLO

    yolo = YOLO("yolov8n.yaml")
    frame = (np.random.default_rng(7).random((320, 320, 3)) * 255).astype("uint8")

    def predict(frames: int) -> None:
        for _ in range(frames):
            yolo.predict(frame, imgsz=320, verbose=False, device="cpu")

    predict(30)
    deadline = time.monotonic() + 3.0  # steady frames: settle checks run, parking is due
    while time.monotonic() < deadline:
        predict(1)
    kept = discovery_hook_registered()
    state = "kept" if kept else "gone"
    print(f"discovery's global hook after three seconds of steady frames: {state}")
    discovery = next(o for o in gc.get_objects() if type(o) is Discovery)
    register = torch.nn.modules.module.register_module_forward_pre_hook
    times: dict[str, list[float]] = {"without the global hook": [], "with it": []}
    for round_index in range(args.rounds):
        order = list(times) if round_index % 2 else list(times)[::-1]
        for label in order:
            handle: Any = register(discovery._on_call) if label == "with it" else None
            start = time.thread_time()
            predict(args.block)
            times[label].append((time.thread_time() - start) / args.block * 1e3)
            if handle is not None:
                handle.remove()
    print(f"\ntorch {torch.__version__}, one thread, YOLOv8n at 320 px, thread CPU per frame")
    per_frame = "ms per frame (median)"
    print_paired_table(times, "without the global hook", per_frame, lambda ms: f"{ms:.2f}")
    instrumentor.uninstrument()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
