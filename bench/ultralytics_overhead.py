"""YOLOv8n ``predict`` through Ultralytics, traced by visiontel-ultralytics vs plain.

    nox -s bench -- ultralytics_overhead     # or: python bench/ultralytics_overhead.py

Two ``YOLO("yolov8n.yaml")`` models with the same random weights run ``predict`` on the
same 320x320 frames, one thread, on the CPU. One is instrumented (``instrument_yolo``:
per-image span, ``preprocess`` / ``inference`` / ``postprocess`` stage spans, the network's
forward and stage spans from visiontel-torch, stage durations with exemplars, detections
per image and per class, the confidence histogram; every frame sampled, spans through a
``BatchSpanProcessor`` into a discarding exporter). The other is untouched. Short blocks
of frames alternate between the two, so drift in the machine's speed hits both alike.

Random weights detect nothing at Ultralytics' default confidence, so ``--conf`` defaults
to a value that yields about a hundred detections per frame: the class and confidence
metrics then do real work on every frame.

Reported per side: median wall and thread-CPU milliseconds per frame; the mean and
standard error of the paired block differences (the telemetry cost per frame); and the
throughput ratio plain/instrumented on wall time (target: instrumented costs at most 3 %,
i.e. ratio >= 0.971, overhead <= 1.03x).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import visiontel.ultralytics
from visiontel.ultralytics import instrument_yolo

_DISTINCT = 8


class _Discard(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="pairs of blocks")
    parser.add_argument("--block", type=int, default=4, help="frames per block")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--conf", type=float, default=0.001)
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    torch.set_num_threads(1)
    from ultralytics import YOLO

    exporter = _Discard()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    plain = YOLO("yolov8n.yaml")
    traced = YOLO("yolov8n.yaml")
    traced.model.load_state_dict(copy.deepcopy(plain.model.state_dict()))
    instrument_yolo(traced, tracer_provider=tracer_provider, meter_provider=meter_provider)
    rng = np.random.default_rng(7)
    frames = [
        rng.integers(0, 255, (args.imgsz, args.imgsz, 3), dtype=np.uint8) for _ in range(_DISTINCT)
    ]
    options = {"imgsz": args.imgsz, "conf": args.conf, "verbose": False, "device": "cpu"}
    detections: dict[str, list[int]] = {"plain": [], "traced": []}

    def runner(name: str, model: Any) -> Callable[[int], None]:
        def run(index: int) -> None:
            (result,) = model.predict(frames[index % _DISTINCT], **options)
            detections[name].append(len(result.boxes))

        return run

    sides = [("traced", runner("traced", traced)), ("plain", runner("plain", plain))]
    wall: dict[str, list[float]] = {"plain": [], "traced": []}
    cpu: dict[str, list[float]] = {"plain": [], "traced": []}
    print(
        f"yolov8n@{args.imgsz} CPU, 1 thread: {args.rounds} rounds of {args.block} frames per "
        f"side, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    for index in range(2 * args.block):  # warm both (first predict builds the predictor)
        for _, run in sides:
            run(index)
    for round_index in range(args.rounds):
        for name, run in sides if round_index % 2 == 0 else sides[::-1]:
            start_wall, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
            for index in range(args.block):
                run(index)
            wall[name].append((time.perf_counter_ns() - start_wall) / args.block / 1e6)
            cpu[name].append((time.thread_time_ns() - start_cpu) / args.block / 1e6)
    visiontel.ultralytics.flush()
    tracer_provider.force_flush()
    report(args, wall, cpu, detections, exporter.spans)
    tracer_provider.shutdown()


def report(
    args: argparse.Namespace,
    wall: dict[str, list[float]],
    cpu: dict[str, list[float]],
    detections: dict[str, list[int]],
    spans: int,
) -> None:
    per_frame = statistics.mean(detections["traced"])
    if detections["traced"] != detections["plain"]:
        print("WARNING: the two models disagree on detections: the comparison is not fair")
    print(f"detections per frame: {per_frame:.0f}; spans exported: {spans}")
    print(
        "| clock | plain ms/frame | traced ms/frame | telemetry µs/frame (mean ± s.e.) | "
        "throughput traced/plain | overhead |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for clock, series in (("wall", wall), ("thread CPU", cpu)):
        plain, traced = statistics.median(series["plain"]), statistics.median(series["traced"])
        deltas = [a - b for a, b in zip(series["traced"], series["plain"], strict=True)]
        mean = statistics.mean(deltas)
        error = statistics.stdev(deltas) / math.sqrt(len(deltas))
        print(
            f"| {clock} | {plain:.2f} | {traced:.2f} | {mean * 1e3:.0f} ± {error * 1e3:.0f} | "
            f"{plain / (plain + mean):.3f} | {(plain + mean) / plain:.3f}x |"
        )
    print(f"load at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
