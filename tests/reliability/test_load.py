"""Load: 8 inference threads sharing one instrumented model plus a thread batching 64 frames
at a time through visiontel.propagation's batch_span, every span sampled, exported over
OTLP/HTTP to the real collector. Memory stays bounded, nothing blocks, and spans are lost
only when the SDK's queue is full (counted here, logged by the SDK)."""

from __future__ import annotations

import threading
import time

import torch
from inference_support import Counting, LogTally, telemetry
from reliability_support import (
    CONFIG_DIR,
    PROFILE,
    RssPeak,
    Stopwatch,
    base_env,
    file_override,
    rss_mb,
    settle,
)

import visiontel.propagation as vp

THREADS = 8
BATCH = 64
RSS_BOUND_MB = 150.0  # growth after warm-up: queue (8192 spans) + allocator slack
# Drift: mean RSS over the second half of the run minus the first half's (samples every
# 5 s). A process whose memory is bounded has reached most of its high-water mark in the
# first half; what it can still add later is what the SDK may hold but had not yet held
# at once: its queue (8192 spans) plus the batch being exported (2048), ~1 KB each as
# Python objects for these spans (tracemalloc: 10.3 MB for 10 240 frame/stage spans; the
# batch spans with 64 links are larger, so ~15 MB), plus its encoded request and
# allocator slack (pymalloc arenas and ten threads' malloc arenas, which keep freed
# memory): 20 MB. A leak shows up as a drift growing with the run: 100 bytes per span
# at the ~2700 spans/s of the full profile is ~40 MB between the halves' means.
# The spans are counted, not kept per trace: a per-trace ledger (~84 bytes per trace,
# ~790 traces/s) put ~10 MB of the test's own into the +20.2 MB an earlier full-profile
# run read.
DRIFT_BOUND_MB = 20.0
STALL_BOUND_S = 2.0  # 10 busy threads share 2 cores and one GIL: gaps of a few 100 ms


def test_load_8_threads_and_64_frame_batches(collectors, record, tmp_path):
    env = base_env()
    override = file_override(tmp_path, "collector", ["traces"])
    collectors.start("collector", [CONFIG_DIR / "local.yaml", override], env)
    tel = telemetry(env["VISIONTEL_OTLP_HTTP_ENDPOINT"], per_trace=False)
    counting: Counting = tel.counting
    stop = threading.Event()
    errors: list[BaseException] = []
    watches = [Stopwatch() for _ in range(THREADS + 1)]
    done = [0] * (THREADS + 1)

    def infer(index: int) -> None:
        image = torch.rand(1, 3, 64, 64)
        with torch.inference_mode():
            while not stop.is_set():
                try:
                    with tel.tracer.start_as_current_span("frame"):
                        tel.model(image)
                    done[index] += 1
                except BaseException as exc:
                    errors.append(exc)
                watches[index].tick()

    def batches() -> None:
        images = torch.rand(BATCH, 3, 32, 32)
        sequence = 0
        with torch.inference_mode():
            while not stop.is_set():
                try:
                    contexts = []
                    for _ in range(BATCH):
                        frame = vp.FrameIdentity.now(f"cam-{sequence % 4}", sequence)
                        with vp.start_frame("capture", frame, tracer=tel.tracer):
                            carrier: list[tuple[str, bytes]] = []
                            vp.inject_mq(carrier)
                        contexts.append(vp.extract_mq(carrier))
                        sequence += 1
                    with vp.batch_span(contexts, "detect", tracer=tel.tracer):
                        tel.model(images)
                    done[THREADS] += 1
                except BaseException as exc:
                    errors.append(exc)
                watches[THREADS].tick()

    threads = [threading.Thread(target=infer, args=(i,), daemon=True) for i in range(THREADS)]
    threads.append(threading.Thread(target=batches, daemon=True))
    rss = RssPeak()
    tally = LogTally().__enter__()
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        time.sleep(5.0)  # warm-up
        for watch in watches:
            watch.reset()
        rss_start = rss.reset()
        samples = []
        end = time.monotonic() + PROFILE.load_s
        while time.monotonic() < end:
            time.sleep(min(5.0, max(0.0, end - time.monotonic())))
            samples.append(rss_mb())
        growth = rss.peak - rss_start
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        rss.close()
        tel.shutdown()  # flushes what the queue still holds
        tally.__exit__()
    elapsed = time.monotonic() - started
    produced = counting.total
    out = tmp_path / "collector-out.jsonl"
    arrived = len(settle(out, key=lambda s: int(s["spanId"], 16), timeout=60))  # distinct
    lost = produced - arrived
    worst = max(w.worst for w in watches)
    warned = tally.queue_full
    half = len(samples) // 2
    drift = (sum(samples[half:]) / max(1, len(samples) - half)) - (
        sum(samples[:half]) / max(1, half)
    )
    record(
        "load-8-threads-64-batches",
        fault=f"{THREADS} inference threads on one instrumented model + 64-frame batch_span "
        "batches, ALWAYS_ON sampling, BatchSpanProcessor queue 8192 / batch 2048, real "
        "collector (local.yaml)",
        duration=f"{PROFILE.load_s:.0f} s after 5 s warm-up",
        measured=f"{sum(done[:THREADS]) / elapsed:.0f} frames/s + {done[THREADS] / elapsed:.1f} "
        f"batches/s, {produced / elapsed:.0f} spans/s; RSS growth {growth:.1f} MB (bound "
        f"{RSS_BOUND_MB:.0f}); second half vs first half {drift:+.1f} MB (bound "
        f"{DRIFT_BOUND_MB:.0f}, {len(samples)} samples); longest gap of any "
        f"thread {worst * 1000:.0f} ms (bound {STALL_BOUND_S * 1000:.0f}); errors {len(errors)}",
        lost=f"{lost}/{produced} spans ({100 * lost / max(1, produced):.1f} %), dropped by the "
        f"full SDK queue ({warned} queue-full warnings logged)",
    )
    assert not errors, repr(errors[:3])
    assert all(done), f"a thread made no progress: {done}"
    assert growth <= RSS_BOUND_MB
    assert len(samples) >= 4, samples  # two per half at least
    assert drift <= DRIFT_BOUND_MB, f"RSS samples (MB): {[round(x, 1) for x in samples]}"
    assert worst <= STALL_BOUND_S
    assert lost >= 0
    assert lost == 0 or warned > 0, "spans were lost without the SDK saying its queue was full"
