"""YOLOv8n ``predict`` through Ultralytics, traced by visiontel-ultralytics vs plain.

    nox -s bench -- ultralytics_overhead     # or: python bench/ultralytics_overhead.py

Two ``YOLO("yolov8n.yaml")`` models with the same random weights run ``predict`` on the
same 320x320 frames, one thread, on the CPU. One is instrumented (``instrument_yolo``:
per-image span, ``preprocess`` / ``inference`` / ``postprocess`` stage spans, the network's
forward and stage spans from visiontel-torch, stage durations with exemplars, detections
per image and per class, the confidence histogram; every frame sampled, spans through a
``BatchSpanProcessor`` into a discarding exporter). The other is untouched. Short blocks
of frames alternate between the two, so drift in the machine's speed hits both alike.
The metrics worker runs the jobs of about a quarter of a second together, so its GIL time
falls on traced and plain blocks alike and the paired ratios do not see it: the report
adds its CPU time per traced frame (its own thread clock) to the median ratio as an upper
bound, as if the inference thread waited for every microsecond of it. ``--flush block``
instead ends each traced block with ``visiontel.ultralytics.flush()`` inside the timed
block: the worker then runs while the inference thread waits, and the spans' later work
runs every block, so that bound is stricter still.

Random weights detect nothing at Ultralytics' default confidence, so ``--conf`` defaults
to a value that yields about a hundred detections per frame: the class and confidence
metrics then do real work on every frame.

Reported per side: median wall and thread-CPU milliseconds per frame; the mean and
standard error of the paired block differences (the telemetry cost per frame); the
throughput ratio plain/instrumented and the overhead from that mean; and the median over
rounds of (traced block / plain block of the same round), the statistic
``torch_overhead.py`` reports (target: instrumented costs at most 3 %, overhead <= 1.03x).
On this VM a few blocks per run stall for milliseconds (another tenant, a page fault
storm); the mean takes them in, on whichever side they fell, the median does not.
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
from visiontel.ultralytics import _metrics, instrument_yolo

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
    parser.add_argument(
        "--flush",
        choices=("end", "block"),
        default="end",
        help="flush visiontel only at the end (default) or after every traced block",
    )
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
    visiontel.ultralytics.flush()
    worker_clock = time.pthread_getcpuclockid(_metrics.worker().thread_id())
    worker_start = time.clock_gettime_ns(worker_clock)
    for round_index in range(args.rounds):
        for name, run in sides if round_index % 2 == 0 else sides[::-1]:
            start_wall, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
            for index in range(args.block):
                run(index)
            if name == "traced" and args.flush == "block":  # counted where it was caused
                visiontel.ultralytics.flush()
            wall[name].append((time.perf_counter_ns() - start_wall) / args.block / 1e6)
            cpu[name].append((time.thread_time_ns() - start_cpu) / args.block / 1e6)
    visiontel.ultralytics.flush()
    frames = args.rounds * args.block
    worker_ms = (time.clock_gettime_ns(worker_clock) - worker_start) / frames / 1e6
    tracer_provider.force_flush()
    report(args, wall, cpu, detections, exporter.spans, worker_ms)
    tracer_provider.shutdown()


def report(
    args: argparse.Namespace,
    wall: dict[str, list[float]],
    cpu: dict[str, list[float]],
    detections: dict[str, list[int]],
    spans: int,
    worker_ms: float,
) -> None:
    per_frame = statistics.mean(detections["traced"])
    if detections["traced"] != detections["plain"]:
        print("WARNING: the two models disagree on detections: the comparison is not fair")
    print(f"detections per frame: {per_frame:.0f}; spans exported: {spans}")
    print(
        "| clock | plain ms/frame | traced ms/frame | telemetry µs/frame (mean ± s.e.) | "
        "throughput traced/plain | overhead | median paired ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    paired: dict[str, float] = {}
    for clock, series in (("wall", wall), ("thread CPU", cpu)):
        plain, traced = statistics.median(series["plain"]), statistics.median(series["traced"])
        deltas = [a - b for a, b in zip(series["traced"], series["plain"], strict=True)]
        mean = statistics.mean(deltas)
        error = statistics.stdev(deltas) / math.sqrt(len(deltas))
        paired[clock] = statistics.median(
            a / b for a, b in zip(series["traced"], series["plain"], strict=True)
        )
        print(
            f"| {clock} | {plain:.2f} | {traced:.2f} | {mean * 1e3:.0f} ± {error * 1e3:.0f} | "
            f"{plain / (plain + mean):.3f} | {(plain + mean) / plain:.3f}x | "
            f"{paired[clock]:.3f}x |"
        )
    bound = paired["wall"] + worker_ms / statistics.median(wall["plain"])
    print(
        f"metrics worker CPU per traced frame: {worker_ms * 1e3:.0f} µs; wall overhead with it "
        f"(upper bound): {bound:.3f}x"
    )
    print(f"load at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
