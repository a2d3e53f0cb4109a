"""Frames per second of the `visiontel demo` pipeline, all instrumentation on vs all off.

    nox -s bench -- pipeline            # or: python bench/pipeline.py --rounds 5 --frames 400
    python bench/pipeline.py --model ssdlite --frames 200 --rounds 6   # torchvision's SSDlite320

Same three processes, same gRPC hops, same model, source unpaced (``--fps 0``) so the
pipeline runs as fast as its slowest stage (the detector). "on" is the embedded default:
visiontel-torch stage spans and metrics, visiontel-propagation context on every hop,
visiontel-gpu (which finds no GPU on a CPU machine), SDK batch processors writing OTLP
JSON files. "off" is ``--no-telemetry``: no SDK, no instrumentation, no context.

Runs alternate (on, off, off, on, ...) so drift in a shared machine's load hits both
sides alike. The figure of a run is the demo's own: results per second at the tracker
from the first result to the last (process start-up, mostly importing torch, excluded).
Reported: median fps of each side and their ratio, each round's ratio with their geometric
mean and its 95 % interval (the paired figure to read), and the CPU time
per frame summed over the three processes (all their threads, from each one's first
frame) and per process, which a loaded machine disturbs far less than throughput. Each
round also prints the 1-minute load average: on a shared machine, read no figure without it.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile

from visiontel.demo._config import MODELS

_FPS = re.compile(r"frames (\d+)/(\d+) +([0-9.]+) fps")
_CPU = re.compile(r"CPU per frame: ([0-9.]+) ms \((.*)\)")


def _per_process(each: str) -> dict[str, float]:
    """``frame-source 1.4, detector 16.1, tracker 1.5`` as a dict."""
    return {name: float(ms) for name, ms in re.findall(r"([\w-]+) ([0-9.]+)", each)}


def _once(
    frames: int, telemetry: bool, output: str, model: str, trace_ratio: float | None
) -> tuple[float, float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VISIONTEL_DEMO_"))}
    if trace_ratio is not None:  # the source's root decides; the other services follow it
        env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        env["OTEL_TRACES_SAMPLER_ARG"] = str(trace_ratio)
    command = [sys.executable, "-m", "visiontel.cli", "demo", "--frames", str(frames)]
    command += ["--fps", "0", "--output", output, "--model", model]
    if not telemetry:
        command.append("--no-telemetry")
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"demo failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    done = [m for m in _FPS.finditer(result.stdout) if m.group(1) == m.group(2)]
    if not done:
        raise SystemExit(f"no final progress line in:\n{result.stdout}")
    cpu = _CPU.search(result.stdout)
    if cpu is None:
        raise SystemExit(f"no CPU line in:\n{result.stdout}")
    return float(done[-1].group(3)), float(cpu.group(1)), cpu.group(2)


# Two-sided 95 % quantiles of Student's t by degrees of freedom (1-30; beyond, ~1.96).
_T95 = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14,
        2.13, 2.12, 2.11, 2.10, 2.09, 2.09, 2.08, 2.07, 2.07, 2.06, 2.06, 2.06, 2.05, 2.05,
        2.05, 2.04)  # fmt: skip


def paired_ratio(ratios: list[float]) -> tuple[float, float, float]:
    """Geometric mean of per-round on/off ratios and its 95 % interval (t on the logs): each
    round's two runs share the machine's load of the moment, so their ratio cancels most of
    the drift that the medians of each side keep."""
    logs = [math.log(r) for r in ratios]
    centre = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(centre), float("nan"), float("nan")
    t = _T95[len(logs) - 2] if len(logs) - 1 <= len(_T95) else 1.96
    half = t * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(centre), math.exp(centre - half), math.exp(centre + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="pairs of runs (default 3)")
    parser.add_argument("--frames", type=int, default=400, help="frames per run (default 400)")
    parser.add_argument("--model", default="tinydet", choices=MODELS, help="the demo's --model")
    parser.add_argument(
        "--trace-ratio",
        type=float,
        default=None,
        help="sample this share of frame traces (metrics and logs stay whole); default: "
        "every frame, the demo's embedded default",
    )
    args = parser.parse_args()
    fps: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    rounds: list[float] = []
    per_process: dict[bool, dict[str, list[float]]] = {True: {}, False: {}}
    with tempfile.TemporaryDirectory(prefix="visiontel-bench-") as output:
        for index in range(args.rounds):
            order = (True, False) if index % 2 == 0 else (False, True)
            got = {
                side: _once(args.frames, side, output, args.model, args.trace_ratio)
                for side in order
            }
            for side, (rate, cpu_ms, _) in got.items():
                fps[side].append(rate)
                cpu[side].append(cpu_ms)
            rounds.append(got[True][0] / got[False][0])
            for side, (_, _, services) in got.items():
                for name, ms in _per_process(services).items():
                    per_process[side].setdefault(name, []).append(ms)
            (fps_on, cpu_on, each_on), (fps_off, cpu_off, each_off) = got[True], got[False]
            print(f"round {index + 1} (load {os.getloadavg()[0]:.2f}): on {fps_on:.1f} fps, "
                  f"off {fps_off:.1f} fps, ratio "
                  f"{rounds[-1]:.3f}; CPU ms/frame on {cpu_on:.1f} ({each_on}), "
                  f"off {cpu_off:.1f} ({each_off})", flush=True)  # fmt: skip
    on, off = statistics.median(fps[True]), statistics.median(fps[False])
    sampled = "every trace" if args.trace_ratio is None else f"trace ratio {args.trace_ratio}"
    print(f"\npipeline, model {args.model}, {sampled} ({args.frames} frames/run, "
          f"{args.rounds} rounds, {os.cpu_count()} CPUs)")  # fmt: skip
    cpu_on, cpu_off = statistics.median(cpu[True]), statistics.median(cpu[False])
    names = sorted(per_process[False])

    def by_service(side: bool) -> str:
        return " / ".join(f"{statistics.median(per_process[side][n]):.1f}" for n in names)

    print(f"| variant | median fps | fps ratio | CPU ms/frame ({' / '.join(names)}) | CPU ratio |")
    print("|---|---:|---:|---:|---:|")
    print(f"| all instrumentation off (`--no-telemetry`) | {off:.1f} | 1.00 | "
          f"{cpu_off:.1f} ({by_service(False)}) | 1.00 |")  # fmt: skip
    print(f"| all on, OTLP JSON files (embedded default) | {on:.1f} | {on / off:.3f} | "
          f"{cpu_on:.1f} ({by_service(True)}) | {cpu_on / cpu_off:.2f} |")  # fmt: skip
    print("per-round on/off ratios: " + ", ".join(f"{r:.3f}" for r in rounds))
    centre, low, high = paired_ratio(rounds)
    print(f"paired on/off ratio (geometric mean of rounds): {centre:.3f} "
          f"(95 % interval {low:.3f}-{high:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
