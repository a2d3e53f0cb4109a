"""Overhead of visiontel-torch on CPU inference, as ratios against an uninstrumented baseline.

    nox -s bench -- torch_overhead            # or: python bench/torch_overhead.py --rounds 15

Two models defined here: a ResNet-18-like net at 224x224 (batch 1), compute-bound, and a
launch-bound detector at 320x320 whose ~90 layers each do very little work. Variants are
run interleaved (one timed block of each per round, in a rotating order) and the table
reports, per variant, the median over rounds of (block time / baseline block time of the
same round).

Time is the inference thread's CPU time (``time.thread_time``) by default: with one torch
thread every operator runs on it, and on a shared, loaded machine CPU time is far steadier
than wall time (which also counts the time the OS gave the core to someone else).
When spans are exported in batches (as here), visiontel-torch finishes a forward's
telemetry later, in batches: every timed block ends with ``visiontel.torch.flush()`` so
that work is counted in the block that caused it. ``--clock process`` counts every
thread's CPU time (the span processor's export thread included).
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

import visiontel.torch as vt
from visiontel.torch._discovery import Discovery  # the bench checks its hook is gone


class DiscardExporter(SpanExporter):
    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Any) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


def basic_block(channels: int, stride: int = 1) -> torch.nn.Module:
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            in_channels = channels // stride if stride > 1 else channels
            self.conv1 = torch.nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
            self.bn1 = torch.nn.BatchNorm2d(channels)
            self.relu = torch.nn.ReLU()
            self.conv2 = torch.nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
            self.bn2 = torch.nn.BatchNorm2d(channels)
            self.down = (
                torch.nn.Sequential(
                    torch.nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                    torch.nn.BatchNorm2d(channels),
                )
                if stride > 1
                else torch.nn.Identity()
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + self.down(x))  # type: ignore[no-any-return]

    return Block()


def resnet18_like() -> torch.nn.Module:
    layers: list[torch.nn.Module] = [
        torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        torch.nn.BatchNorm2d(64),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, 2, 1),
    ]
    for channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [basic_block(channels, stride), basic_block(channels)]
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(512, 1000)]
    return torch.nn.Sequential(*layers)


def launch_bound_detector() -> torch.nn.Module:
    """320x320 input, 30 cheap 1x1 conv blocks at 40x40: per-layer work is tiny."""
    stem = [torch.nn.Conv2d(3, 16, 3, 8, 1), torch.nn.ReLU()]
    body: list[torch.nn.Module] = []
    for _ in range(30):
        body += [torch.nn.Conv2d(16, 16, 1), torch.nn.BatchNorm2d(16), torch.nn.SiLU()]
    head = [torch.nn.Conv2d(16, 6, 1)]
    return torch.nn.Sequential(
        torch.nn.Sequential(*stem), torch.nn.Sequential(*body), torch.nn.Sequential(*head)
    )


class NaiveTracer:
    """What a straightforward tracer does: start_as_current_span in every hook."""

    def __init__(self, model: torch.nn.Module, tracer: trace.Tracer) -> None:
        self.handles = []
        for name, module in model.named_modules():
            if name and next(module.children(), None) is not None:
                continue
            stack: list[AbstractContextManager[Any]] = []

            def pre(_m: Any, _a: Any, name: str = name or "root", stack: list = stack) -> None:
                manager = tracer.start_as_current_span(name)
                manager.__enter__()
                stack.append(manager)

            def post(_m: Any, _a: Any, _o: Any, stack: list = stack) -> None:
                stack.pop().__exit__(None, None, None)

            self.handles.append(module.register_forward_pre_hook(pre))
            self.handles.append(module.register_forward_hook(post, always_call=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


METRIC_READER = True
"""Meter providers get a metric reader, as every deployment has (``--no-metric-reader``:
none, as this bench had before 2026-12-05; the SDK then skips most of a record's work)."""


def make_providers(sampler: Sampler) -> tuple[TracerProvider, MeterProvider, DiscardExporter]:
    exporter = DiscardExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=65536, max_export_batch_size=4096)
    )
    # Never collected during the run: the record path is what a periodic reader has, and
    # the storage stays bounded (a few attribute sets).
    readers = [InMemoryMetricReader()] if METRIC_READER else []
    return provider, MeterProvider(metric_readers=readers), exporter


Variant = tuple[Callable[[], None], Callable[[], None], Callable[[], AbstractContextManager[Any]]]


hook_kept: list[str] = []
"""Auto-discovery blocks timed while discovery's global hook was still registered."""


def discovery_hook_registered() -> bool:
    """Whether auto-discovery's global forward pre-hook is registered now."""
    hooks = torch.nn.modules.module._global_forward_pre_hooks.values()
    return any(isinstance(getattr(hook, "__self__", None), Discovery) for hook in hooks)


def variants(model: torch.nn.Module) -> dict[str, Variant]:
    """name -> (install, remove, context around one timed block)."""
    sampled = make_providers(ALWAYS_ON)
    unsampled = make_providers(ALWAYS_OFF)
    # what production usually runs (OTEL_TRACES_SAMPLER=parentbased_traceidratio): 1 in 100
    ratio = make_providers(ParentBased(TraceIdRatioBased(0.01)))
    naive_holder: list[NaiveTracer] = []
    instrumentor = vt.TorchInstrumentor()

    def instrument(providers: Any, granularity: str) -> Callable[[], None]:
        def install() -> None:
            vt.instrument_model(
                model,
                name="bench",
                granularity=granularity,
                max_layer_spans=4096,
                tracer_provider=providers[0],
                meter_provider=providers[1],
            )

        return install

    def remove() -> None:
        vt.flush(30)
        vt.uninstrument_model(model)

    floor_handles: list[Any] = []

    def noop_hooks_install() -> None:
        # What a root pre-hook and an always-called forward hook cost torch with no work in
        # them (the module call leaves torch's fast path): the floor of any hook-based
        # instrumentation, visiontel-torch's included.
        floor_handles.append(
            model.register_forward_pre_hook(lambda _m, _a, _k: None, with_kwargs=True)
        )
        floor_handles.append(
            model.register_forward_hook(
                lambda _m, _a, _k, _o: None, with_kwargs=True, always_call=True
            )
        )

    def noop_hooks_remove() -> None:
        while floor_handles:
            floor_handles.pop().remove()

    def naive_install() -> None:
        naive_holder.append(NaiveTracer(model, sampled[0].get_tracer("naive")))

    def naive_remove() -> None:
        naive_holder.pop().remove()

    def auto_install() -> None:
        instrumentor.instrument(
            tracer_provider=unsampled[0], meter_provider=unsampled[1], granularity="layer"
        )

    def auto_remove() -> None:
        instrumentor.uninstrument()

    def profiler() -> AbstractContextManager[Any]:
        return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    @contextmanager
    def profiler_with_results() -> Iterator[None]:
        # What a user pays to get per-operator timings out: the profile is parsed into
        # events when the block ends (the spans of the other rows are handed to the SDK's
        # processor inside the timed block too).
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            yield
        prof.events()

    noop = lambda: None  # noqa: E731
    return {
        "baseline": (noop, noop, nullcontext),
        "two root hooks doing nothing (floor)": (
            noop_hooks_install,
            noop_hooks_remove,
            nullcontext,
        ),
        "unsampled (layer)": (instrument(unsampled, "layer"), remove, nullcontext),
        "auto-discovery, unsampled": (auto_install, auto_remove, nullcontext),
        "parentbased_traceidratio 1 % (stage)": (instrument(ratio, "stage"), remove, nullcontext),
        "model": (instrument(sampled, "model"), remove, nullcontext),
        "stage": (instrument(sampled, "stage"), remove, nullcontext),
        "layer (all sampled)": (instrument(sampled, "layer"), remove, nullcontext),
        "naive span per hook": (naive_install, naive_remove, nullcontext),
        "torch.profiler (CPU), collection only": (noop, noop, profiler),
        "torch.profiler (CPU) + events()": (noop, noop, profiler_with_results),
    }


def measure(
    model: torch.nn.Module,
    images: torch.Tensor,
    rounds: int,
    iters: int,
    clock: Any,
    only_variants: list[str] | None = None,
) -> dict[str, Any]:
    model.eval()
    table = variants(model)
    if only_variants:  # the baseline always runs: every ratio is against it
        table = {
            name: entry
            for name, entry in table.items()
            if name == "baseline" or any(part in name for part in only_variants)
        }
    times: dict[str, list[float]] = {name: [] for name in table}
    names = list(table)
    with torch.inference_mode():
        for _ in range(3):  # warm-up
            model(images)
        for round_index in range(rounds):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for name in order:
                install, remove, around = table[name]
                install()
                for _ in range(3):  # untimed: discovery and its settling, arming caches
                    model(images)
                if name.startswith("auto") and discovery_hook_registered():
                    hook_kept.append(name)
                # and their later work: left queued, it would run in the timed block's flush,
                # charging the block three more forwards and a fresh instrumentation's set-up
                vt.flush(30)
                start = clock()  # includes entering/leaving the context (profiler teardown)
                with around():
                    for _ in range(iters):
                        model(images)
                vt.flush(30)  # the telemetry still queued is part of this block's cost
                elapsed = clock() - start
                remove()
                times[name].append(elapsed / iters)
    # Ratio within each round (variant vs the baseline block of the same round), then the
    # median over rounds: drift in machine load cancels out within a round.
    return {
        name: {
            "median_ms": statistics.median(t) * 1e3,
            "ratio": statistics.median(v / b for v, b in zip(t, times["baseline"])),
            # Noise on a shared machine only ever adds time: the fastest block of each
            # variant is the best estimate of its undisturbed cost.
            "min_ratio": min(t) / min(times["baseline"]),
        }
        for name, t in times.items()
    }


def fixed_cost_us() -> dict[str, float]:
    """CPU cost of the root hooks alone (one forward's bookkeeping), best of 7 blocks.

    A cross-check for the ratios: the minimum of repeated blocks is nearly immune to the
    noise of a shared machine, and it bounds what the unsampled and model rows can cost.
    """
    from visiontel.torch import _model

    module, images = torch.nn.Linear(2, 2), torch.randn(1, 3, 320, 320)
    output = [{"boxes": torch.zeros(3, 4)}]
    costs = {}
    for label, sampler in (("unsampled", ALWAYS_OFF), ("sampled, model granularity", ALWAYS_ON)):
        tracer_provider, meter_provider, _ = make_providers(sampler)
        vt.instrument_model(module, tracer_provider=tracer_provider, meter_provider=meter_provider)
        hooks = _model.instrumentation_of(module)
        assert hooks is not None
        best = float("inf")
        for _ in range(7):
            start = time.thread_time()
            for _ in range(2000):  # the hooks torch calls (compiled work where built)
                hooks._root_pre(module, (images,), {})
                hooks._root_post(module, (images,), {}, output)
            best = min(best, (time.thread_time() - start) / 2000 * 1e6)
        vt.uninstrument_model(module)
        costs[label] = best
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest)"
    )
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall", "process"],
        default="cpu",
        help="cpu: the inference thread's CPU time; wall: elapsed time; process: CPU time of "
        "every thread (resolver and span exporter included)",
    )
    parser.add_argument(
        "--only", choices=["resnet", "detector"], default=None, help="measure one model only"
    )
    parser.add_argument(
        "--no-metric-reader",
        action="store_true",
        help="meter providers without a reader (the SDK then skips most of a record's work)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=None,
        help="run only the variants whose name contains this text (repeatable; the baseline "
        "always runs): fewer variants per round leave room for more rounds",
    )
    args = parser.parse_args()
    global METRIC_READER
    METRIC_READER = not args.no_metric_reader
    torch.set_num_threads(args.threads)
    # Each model is built just before it is measured and dropped after: a model built and
    # never called keeps auto-discovery's global hook on (it may yet become a root) until
    # it is parked, seconds later, and the auto-discovery row re-instruments every block.
    cases: dict[str, Callable[[], tuple[torch.nn.Module, torch.Tensor]]] = {
        "ResNet-18-like 224x224 b1": lambda: (resnet18_like(), torch.randn(1, 3, 224, 224)),
        "launch-bound detector 320x320 b1": lambda: (
            launch_bound_detector(),
            torch.randn(1, 3, 320, 320),
        ),
    }
    if args.only:
        cases = {k: v for k, v in cases.items() if args.only in k.lower()}
    results: dict[str, Any] = {}
    for case, build in cases.items():
        print(f"measuring {case} ({args.rounds} rounds x {args.iters} forwards)...", flush=True)
        clock = {"cpu": time.thread_time, "wall": time.perf_counter, "process": time.process_time}
        torch.manual_seed(0)
        model, images = build()
        results[case] = measure(
            model, images, args.rounds, args.iters, clock[args.clock], args.variant
        )
        del model, images
        gc.collect()
    if hook_kept:
        print(f"\nwarning: auto-discovery's global hook was on in {len(hook_kept)} timed blocks")
    header = (
        "| variant (median paired ratio / ratio of fastest blocks) | " + " | ".join(cases) + " |"
    )
    python = sys.version.split()[0]
    threads = torch.get_num_threads()
    reader = "a metric reader" if METRIC_READER else "no metric reader"
    print(f"\ntorch {torch.__version__}, {threads} threads, python {python}, {args.clock} time,")
    print(f"{reader}")
    print(header)
    print("|---|" + "---|" * len(cases))
    for variant in next(iter(results.values())):
        cells = [
            f"{results[c][variant]['ratio']:.3f}x / {results[c][variant]['min_ratio']:.3f}x"
            f" ({results[c][variant]['median_ms']:.2f} ms)"
            for c in cases
        ]
        print(f"| {variant} | " + " | ".join(cells) + " |")
    fixed = fixed_cost_us()
    print("\n| root hooks per forward | CPU µs (best of 7 x 2000) |\n|---|---|")
    for label, micros in fixed.items():
        print(f"| {label} | {micros:.1f} |")
    if args.out:
        args.out.write_text(json.dumps({"ratios": results, "fixed_us": fixed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
