"""The null band of test_collector_faults.py's throughput comparisons: the same runs with the
fault switched off, so whatever ratio they read is noise alone.

    VISIONTEL_OTELCOL=... python tests/reliability/null_band.py [--runs 5] [--layout slow|down]

`slow` is test_slow_collector_never_stalls_inference's prompt/slow alternation with the
receiver prompt in both phases; `down` is test_collector_down_then_restarted with the
collector left up (needs VISIONTEL_OTELCOL). Each run prints the fault/healthy ratio of
every quantity the tests report; the summary gives min and max per quantity, and the load
average around the runs (this machine is shared). THROUGHPUT_FLOOR is chosen from these.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from inference_support import Window  # noqa: E402
from reliability_support import PROFILE, Collectors  # noqa: E402
from test_collector_faults import (  # noqa: E402
    _ratio,
    _work_ratio,
    alternating_phases,
    outage_phases,
)


def _with_gc(w: Window) -> float:
    return w.frame_cpu_us + w.gc_us_per_frame


def ratios(fault: Window, healthy: Window) -> dict[str, float]:
    """Fault/healthy ratios, each oriented as test_collector_faults.py asserts or reports
    them (below 1: the fault phase did worse)."""
    return {
        "frame_cost": _work_ratio(fault, healthy),  # the asserted one, by the tests' own code
        # the inference thread's plain CPU time per frame (GC included, not normalised)
        "thread_cpu": _ratio(_with_gc(healthy), _with_gc(fault)),
        # normalised, GC included
        "frame_cost_with_gc": _ratio(
            _with_gc(healthy) / healthy.reference_cpu_us, _with_gc(fault) / fault.reference_cpu_us
        ),
        "process_cpu": _ratio(fault.median_frames_per_cpu_s, healthy.median_frames_per_cpu_s),
        "wall": _ratio(fault.median_fps, healthy.median_fps),
        "gc_share": max(fault.gc_cpu_s, healthy.gc_cpu_s)
        / min(fault.thread_cpu_s, healthy.thread_cpu_s),
        "gap_ms": 1000 * max(fault.worst_gap_s, healthy.worst_gap_s),
    }


def one_run(layout: str) -> dict[str, float]:
    if layout == "slow":
        alt = alternating_phases(delay_s=0.0)
        return ratios(alt.slow, alt.prompt)
    otelcol = os.environ.get("VISIONTEL_OTELCOL", "")
    if not otelcol:
        sys.exit(
            "--layout down needs VISIONTEL_OTELCOL (python3 collector-config/toolchain.py otelcol)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        collectors = Collectors(pathlib.Path(otelcol), pathlib.Path(tmp))
        try:
            run = outage_phases(collectors, pathlib.Path(tmp), fault=False)
        finally:
            collectors.stop_all()
    return ratios(run.down, run.up)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--layout", choices=("slow", "down"), default="slow")
    args = parser.parse_args(argv)
    seen: list[dict[str, float]] = []
    for index in range(args.runs):
        row = {"run": index, **one_run(args.layout), "load1": os.getloadavg()[0]}
        print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
        seen.append(row)
    summary = {
        key: (round(min(r[key] for r in seen), 4), round(max(r[key] for r in seen), 4))
        for key in seen[0]
        if key != "run"
    }
    print(json.dumps({"layout": args.layout, "profile": PROFILE.name, "min_max": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
