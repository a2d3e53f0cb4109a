"""The demo detector's per-frame work, telemetry on vs off, interleaved in one process.

    nox -s bench -- detector_loop        # or: python bench/detector_loop.py --model ssdlite

`bench/pipeline.py` runs the real three-process pipeline, but on a shared 2-core machine
its rounds move by 15-25 % from one run to the next, far more than the few per cent it is
meant to resolve. This takes the stage that bounds the pipeline's throughput, the
detector's frame loop, into one process and alternates short blocks of frames with
everything on and everything off, so drift in the machine's speed hits both sides alike:

- on: the frame's ``detect`` span continued from a carried context (visiontel-propagation),
  ``preprocess`` / ``postprocess`` stages and the instrumented model (visiontel-torch,
  stage granularity, metrics with exemplars), the ``send result`` client span with its
  context injected; the demo's SDK set-up with its OTLP JSON file exporters.
- off: the same preprocessing, an identical uninstrumented model and postprocessing.

Reported: the median thread CPU per frame of each side, the mean and standard error of
the paired block differences, and the throughput ratio this implies for the detector
(off / on per frame). Export runs on the SDK's own threads and is not in these figures
(bench/pipeline.py's CPU columns include it).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import pathlib
import statistics
import tempfile
import time
from typing import Any

import torch
from opentelemetry import trace
from opentelemetry.trace import SpanKind

import visiontel.propagation as vp
import visiontel.torch as vt
from visiontel.demo._config import MODELS
from visiontel.demo._frames import synthetic
from visiontel.demo._model import to_frame
from visiontel.demo._telemetry import setup
from visiontel.demo._wire import KIND_FRAME, Result
from visiontel.demo._zoo import build

_WIDTH, _HEIGHT, _DISTINCT = 320, 240, 16
_VERSION = "1.0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tinydet", choices=MODELS)
    parser.add_argument("--rounds", type=int, default=0, help="pairs of blocks (default: by model)")
    parser.add_argument("--block", type=int, default=0, help="frames per block (default: by model)")
    args = parser.parse_args()
    small = args.model == "tinydet"
    rounds = args.rounds or (150 if small else 60)
    block = args.block or (8 if small else 3)
    torch.set_num_threads(1)
    telemetry = setup("detector", "bench", pathlib.Path(tempfile.mkdtemp()), enabled=True)
    cpu = torch.device("cpu")
    on_model, off_model = build(args.model, _VERSION, cpu), build(args.model, _VERSION, cpu)
    vt.instrument_model(on_model.module, name=args.model, version=_VERSION)
    tracer = trace.get_tracer("visiontel.demo.detector")
    stages = {
        name: vt.stage(name, model=args.model, version=_VERSION)
        for name in ("preprocess", "postprocess")  # the demo's stage names
    }
    attributes = {"visiontel.model.name": args.model, "visiontel.model.version": _VERSION}
    frames = synthetic(_WIDTH, _HEIGHT)
    pixels = [next(frames).tobytes() for _ in range(_DISTINCT)]
    carried = []
    for sequence in range(_DISTINCT):  # what the source would send
        metadata: list[tuple[str, str | bytes]] = []
        identity = vp.FrameIdentity.now("bench", sequence)
        with vp.start_frame("capture", identity, tracer=trace.get_tracer("bench.source")):
            vp.inject_grpc(metadata)
        carried.append(vp.extract_grpc(metadata))

    def on(index: int) -> None:
        slot = index % _DISTINCT
        with vp.continue_frame("detect", carried[slot], tracer=tracer, attributes=attributes):
            with stages["preprocess"]:
                tensor, scale = on_model.prepare(pixels[slot], _WIDTH, _HEIGHT, 3, cpu)
            rows = on_model.rows(on_model.module(tensor))
            with stages["postprocess"]:
                boxes = to_frame(rows, scale, _WIDTH, _HEIGHT)
                Result(KIND_FRAME, index, 0, _VERSION, boxes).pack()
            metadata: list[tuple[str, str | bytes]] = []
            span = vp.start_span("send result", tracer=tracer, kind=SpanKind.CLIENT)
            vp.inject_grpc(metadata, trace.set_span_in_context(span))
            span.end()

    def off(index: int) -> None:
        slot = index % _DISTINCT
        tensor, scale = off_model.prepare(pixels[slot], _WIDTH, _HEIGHT, 3, cpu)
        boxes = to_frame(off_model.rows(off_model.module(tensor)), scale, _WIDTH, _HEIGHT)
        Result(KIND_FRAME, index, 0, _VERSION, boxes).pack()

    per_frame: dict[str, list[float]] = {"on": [], "off": []}
    sides: list[tuple[str, Any]] = [("on", on), ("off", off)]
    print(f"{args.model}: {rounds} rounds of {block} frames per side, load "
          f"{os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    with torch.inference_mode():
        for index in range(3 * block):  # warm both paths
            on(index)
            off(index)
        for round_index in range(rounds):
            for name, run in sides if round_index % 2 == 0 else sides[::-1]:
                start = time.thread_time_ns()
                for index in range(block):
                    run(index)
                per_frame[name].append((time.thread_time_ns() - start) / block / 1e6)
    with contextlib.suppress(Exception):
        telemetry.shutdown()
    report(args.model, per_frame)


def report(model: str, per_frame: dict[str, list[float]]) -> None:
    deltas = [a - b for a, b in zip(per_frame["on"], per_frame["off"], strict=True)]
    on, off = statistics.median(per_frame["on"]), statistics.median(per_frame["off"])
    mean = statistics.mean(deltas)
    error = statistics.stdev(deltas) / math.sqrt(len(deltas))
    print("| model | off ms/frame | on ms/frame | telemetry ms/frame (mean ± s.e.) | "
          "detector throughput on/off | load |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| {model} | {off:.2f} | {on:.2f} | {mean:.3f} ± {error:.3f} | "
          f"{off / (off + mean):.3f} ({off / (off + mean + 2 * error):.3f}–"
          f"{off / (off + mean - 2 * error):.3f}) | {os.getloadavg()[0]:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
