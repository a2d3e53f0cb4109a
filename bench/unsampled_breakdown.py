"""Where an unsampled forward's cost goes, from torch's hook path up to the bench's flush.

    nox -s bench -- unsampled_breakdown     # or: python bench/unsampled_breakdown.py

``--sampled GRANULARITY``: the same for forwards that are all sampled.

The launch-bound detector of ``torch_overhead.py`` (320x320, ~90 cheap layers, one thread),
in blocks of five forwards, each variant one block per round in a rotating order; the
table gives the median over rounds of (block thread-CPU time / the plain block of the same
round). Variants, each adding one thing to the one before:

* the plain model again (the noise of the method);
* ``forward`` replaced on the instance by a Python wrapper that does nothing;
* a kwargs pre-hook and an always-called kwargs post-hook that do nothing (what visiontel
  registers on a root: torch's hooked call path with no work in it);
* visiontel-torch, nothing sampled, its later work not counted (it runs 64 at a time, or
  on the resolver thread);
* + the later work drained at the end of the block;
* + ``visiontel.torch.flush()`` at the end of the block (what ``torch_overhead.py`` does).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

import visiontel.torch as vt
from visiontel.torch import _runtime

sys.path.insert(0, str(Path(__file__).parent))
from _paired import print_paired_table
from torch_overhead import launch_bound_detector, make_providers

PLAIN = "plain"
VARIANTS = (
    PLAIN,
    "plain again",
    "forward wrapper doing nothing",
    "two hooks doing nothing",
    "visiontel, later work not counted",
    "+ later work drained",
    "+ flush()",
)
VISIONTEL = VARIANTS[4:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=120)
    parser.add_argument(
        "--sampled",
        choices=["model", "stage", "layer"],
        default=None,
        help="every forward sampled (ALWAYS_ON), at this granularity, instead of none",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, images = launch_bound_detector().eval(), torch.randn(1, 3, 320, 320)
    tracer_provider, meter_provider, _ = make_providers(ALWAYS_ON if args.sampled else ALWAYS_OFF)
    undo: list[Callable[[], None]] = []

    def install(variant: str) -> None:
        if variant == "forward wrapper doing nothing":
            inner = model.forward

            def forward(*call_args: Any, **call_kwargs: Any) -> Any:
                return inner(*call_args, **call_kwargs)

            model.forward = forward  # type: ignore[method-assign]
            undo.append(lambda: vars(model).pop("forward"))
        elif variant == "two hooks doing nothing":
            pre = model.register_forward_pre_hook(lambda _m, _a, _k: None, with_kwargs=True)
            post = model.register_forward_hook(
                lambda _m, _a, _k, _o: None, with_kwargs=True, always_call=True
            )
            undo.extend((pre.remove, post.remove))
        elif variant in VISIONTEL:
            vt.instrument_model(
                model,
                name="breakdown",
                granularity=args.sampled or "layer",
                tracer_provider=tracer_provider,
                meter_provider=meter_provider,
            )
            undo.append(lambda: (vt.flush(30), vt.uninstrument_model(model)))

    def after_block(variant: str) -> None:
        if variant == "+ later work drained":
            for runtime in _runtime.all_runtimes():
                runtime.resolver.drain_later()
        elif variant == "+ flush()":
            vt.flush(30)

    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    with torch.inference_mode():
        for _ in range(5):
            model(images)
        for round_index in range(args.rounds):
            shift = round_index % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                install(variant)
                for _ in range(3):  # untimed: whatever settles on the first calls
                    model(images)
                if variant in VISIONTEL:  # and their later work (torch_overhead.py does too)
                    vt.flush(30)
                start = time.thread_time()
                for _ in range(5):
                    model(images)
                after_block(variant)
                times[variant].append(time.thread_time() - start)
                while undo:
                    undo.pop()()
    kept = f"all sampled at {args.sampled} granularity" if args.sampled else "none sampled"
    print(f"\ntorch {torch.__version__}, one thread, {args.rounds} rounds of 5 forwards, {kept}")
    per_forward = "µs per forward (median)"
    print_paired_table(times, PLAIN, per_forward, lambda block: f"{block / 5 * 1e6:.0f}", 4)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
