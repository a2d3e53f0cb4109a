"""What a sampled forward's later work costs, per forward, in runs as production has them.

    nox -s bench -- later_work      # or: python bench/later_work.py --granularity stage

Where spans end in batch processors, a sampled forward leaves its span's end and its metric
points to later work: run 64 at a time on the inference thread, or by the resolver thread
when it wakes. ``unsampled_breakdown.py --sampled`` drains that work after every block of
five forwards, so its runs are five long; here nothing drains it but visiontel itself, as
in a serving loop. The launch-bound detector of ``torch_overhead.py`` (one thread,
everything sampled) runs ``--forwards`` forwards after a warm-up; every run of later work
is timed in the CPU time of the thread that runs it, and the table gives the mean per
forward over all runs and the median per forward over the full runs (32 or more items).
The garbage collector runs between blocks of 200 forwards, not inside the timed runs.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

import visiontel.torch as vt
from visiontel.torch import _resolver

sys.path.insert(0, str(Path(__file__).parent))
from torch_overhead import launch_bound_detector, make_providers

_FULL_RUN = 32


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--granularity", choices=["model", "stage", "layer"], default="model")
    parser.add_argument("--forwards", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    totals = {"ns": 0, "items": 0}
    full_runs: list[float] = []
    run_later = _resolver.Resolver._run_later

    def timed(resolver: Any, handing_over: bool) -> None:
        items = len(resolver._later)
        start = time.thread_time_ns()
        run_later(resolver, handing_over)
        spent = time.thread_time_ns() - start
        totals["ns"] += spent
        totals["items"] += items
        if items >= _FULL_RUN:
            full_runs.append(spent / items)

    _resolver.Resolver._run_later = timed  # type: ignore[method-assign]
    model, images = launch_bound_detector().eval(), torch.randn(1, 3, 320, 320)
    tracer_provider, meter_provider, _ = make_providers(ALWAYS_ON)
    vt.instrument_model(
        model,
        name="later",
        granularity=args.granularity,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    with torch.inference_mode():
        for _ in range(200):
            model(images)
        vt.flush(30)
        totals.update(ns=0, items=0)
        full_runs.clear()
        gc.collect()
        gc.disable()
        try:
            for index in range(args.forwards):
                model(images)
                if index % 200 == 199:
                    gc.collect()
            vt.flush(30)
        finally:
            gc.enable()
    mean = totals["ns"] / max(totals["items"], 1) / 1e3
    median = statistics.median(full_runs) / 1e3 if full_runs else float("nan")
    print(f"\ntorch {torch.__version__}, one thread, {args.forwards} forwards sampled")
    print("| granularity | µs per forward, all runs (mean) | full runs (median) | runs ≥ 32 |")
    print("|---|---:|---:|---:|")
    print(f"| {args.granularity} | {mean:.1f} | {median:.1f} | {len(full_runs)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
