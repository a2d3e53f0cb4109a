"""Collector down, collector slow, gateway down behind the agent's persistent queue.

The application is an in-process inference loop (inference_support.Loop): visiontel.torch
on a small CPU model, the SDK's BatchSpanProcessor and OTLP/HTTP exporter, one trace per
frame. Spans are counted where they are produced and in the real collector's file output.
"""

from __future__ import annotations

import os
import time

from inference_support import (
    EXPORT_TIMEOUT_S,
    LogTally,
    Loop,
    Window,
    telemetry,
)
from reliability_support import (
    CONFIG_DIR,
    PROFILE,
    RssPeak,
    base_env,
    file_override,
    free_port,
    gateway_env,
    read_spans,
    settle,
)
from secrets_support import otlp_receiver, self_signed_tls

# Fault / collector-up ratio of median frames per process-CPU second. Each should read >= 1
# (a failing or waiting exporter does less work), but CPU time itself is noisy on a shared
# VM: a plain torch loop's frames per thread-CPU second moves 10-12 % between one-second
# chunks, and this file's slow-collector comparison with the receiver prompt in *both*
# phases read 0.85-1.06 (4 runs, 2026-11-26). 0.95 sat inside that band (CI read 0.88 with
# a 3 s delay); 0.80 sits below it and still fails a fault that costs a fifth of the frames.
THROUGHPUT_FLOOR = 0.80
# Longest gap between two frames of the inference thread. Normal frames take a few ms; a
# loaded shared 2-core machine adds up to ~1 s; waiting on an export would add its whole
# timeout (3 s) or the slow collector's delay (3 s).
STALL_BOUND_S = 2.0
# Growth of the process's resident memory during an outage. What the SDK holds is bounded:
# at most 8192 queued spans plus the 2048 of the batch being retried (a few KB each as
# Python objects; counting ReadableSpan objects shows they stop growing once the queue is
# full), plus allocator slack and this test's own ledger (three dict entries per frame).
# Unbounded growth would keep climbing with the outage's length: the row also gives the
# reading at half the outage.
RSS_BOUND_MB = 100.0
# A span produced this long after the collector is back must arrive: the exporter's
# current retry gives up after EXPORT_TIMEOUT_S, the schedule delay is 0.5 s.
RECOVERY_BOUND_S = EXPORT_TIMEOUT_S + 2.0


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _combined(*windows: Window) -> Window:
    return Window(
        frames=sum(w.frames for w in windows),
        wall_s=sum(w.wall_s for w in windows),
        cpu_s=sum(w.cpu_s for w in windows),
        worst_gap_s=max(w.worst_gap_s for w in windows),
        chunks=[c for w in windows for c in w.chunks],
    )


def test_collector_down_then_restarted(collectors, record, tmp_path):
    env = base_env()
    override = file_override(tmp_path, "collector", ["traces"])
    collectors.start("collector", [CONFIG_DIR / "local.yaml", override], env)
    tel = telemetry(env["VISIONTEL_OTLP_HTTP_ENDPOINT"])
    loop = Loop(tel)
    rss = RssPeak()
    tally = LogTally().__enter__()
    loop.start()
    try:
        loop.measure(3.0)  # warm-up: allocator, first exports
        up_start = rss.reset()
        up_before = loop.measure(PROFILE.window_s)
        growth_up = rss.peak - up_start
        rss_before = rss.reset()
        at_stop = tally.snapshot()
        collectors.stop("collector")
        stopped_at = time.monotonic()
        first_half = loop.measure(PROFILE.outage_s / 2)
        rss_half = rss.peak - rss_before
        down = _combined(first_half, loop.measure(PROFILE.outage_s / 2))
        collectors.restart("collector")
        restarted_at = time.monotonic()
        at_restart = tally.snapshot()
        up_after = loop.measure(max(PROFILE.window_s, RECOVERY_BOUND_S + 8))
        rss_growth = rss.peak - rss_before
    finally:
        loop.finish()
        rss.close()
        tel.shutdown()
        tally.__exit__()
    spans = settle(tmp_path / "collector-out.jsonl")

    arrived: dict[int, int] = {}
    for span in spans:
        tid = int(span["traceId"], 16)
        arrived[tid] = arrived.get(tid, 0) + 1
    produced = tel.counting.per_trace
    seq_start = loop.started_at

    def lost_between(t0: float, t1: float) -> tuple[int, int]:
        frames = [t for t, s in loop.trace_of.items() if t0 <= seq_start[s] < t1]
        made = sum(produced[t] for t in frames)
        return made, made - sum(min(arrived.get(t, 0), produced[t]) for t in frames)

    # Spans still in the SDK queue when the collector stops belong to the outage: "up"
    # counts frames started more than one export cycle (schedule delay + timeout) before.
    made_up, lost_up = lost_between(0, stopped_at - RECOVERY_BOUND_S)
    export_errors = sum(at_stop)
    full_down, failed_down = (at_restart[0] - at_stop[0], at_restart[1] - at_stop[1])
    made_down, lost_down = lost_between(stopped_at, restarted_at)
    made_after, lost_after = lost_between(restarted_at + RECOVERY_BOUND_S, float("inf"))
    incomplete_after = sorted(
        seq_start[s] - restarted_at
        for t, s in loop.trace_of.items()
        if seq_start[s] >= restarted_at and arrived.get(t, 0) < produced[t]
    )
    recovered_in = incomplete_after[-1] if incomplete_after else 0.0
    up = _combined(up_before, up_after)
    cpu_ratio = _ratio(down.median_frames_per_cpu_s, up.median_frames_per_cpu_s)
    wall_ratio = _ratio(down.median_fps, up.median_fps)
    record(
        "collector-down",
        fault="otelcol-visiontel (local.yaml) stopped, then restarted, under an instrumented "
        "inference loop (torch stage spans, BatchSpanProcessor queue 8192 / batch 2048, OTLP/HTTP, "
        f"exporter timeout {EXPORT_TIMEOUT_S:.0f} s)",
        duration=f"{PROFILE.outage_s:.0f} s down, {up.wall_s:.0f} s up around it",
        measured=f"throughput down/up {cpu_ratio:.3f} per CPU-s (floor {THROUGHPUT_FLOOR}), "
        f"{wall_ratio:.3f} wall ({down.median_fps:.0f} vs {up.median_fps:.0f} frames/s); "
        f"longest frame gap {down.worst_gap_s * 1000:.0f} ms (bound "
        f"{STALL_BOUND_S * 1000:.0f}); RSS growth {rss_growth:.1f} MB (bound "
        f"{RSS_BOUND_MB:.0f}; {rss_half:.1f} MB at half the outage, {growth_up:.1f} MB over "
        "the collector-up window before it); "
        "spans arriving complete again "
        f"{recovered_in:.1f} s after the restart (bound {RECOVERY_BOUND_S:.0f})",
        lost=f"collector up (frames started >= {RECOVERY_BOUND_S:.0f} s before the stop): "
        f"{lost_up}/{made_up} spans ({export_errors} drops logged); down: "
        f"{lost_down}/{made_down} (logged: {failed_down} failed exports, "
        f"{full_down} queue-full warnings); produced >= "
        f"{RECOVERY_BOUND_S:.0f} s after restart: {lost_after}/{made_after}",
    )
    assert not loop.errors, repr(loop.errors[:3])
    assert cpu_ratio >= THROUGHPUT_FLOOR
    assert down.worst_gap_s <= STALL_BOUND_S
    assert rss_growth <= RSS_BOUND_MB
    assert made_after > 0 and lost_after == 0
    # While the collector is up, a span is lost only with a log line saying so: the SDK's
    # queue-full warning or its failed-export error (a batch that timed out).
    assert lost_up == 0 or export_errors > 0
    assert lost_down == 0 or failed_down + full_down > 0


def test_slow_collector_never_stalls_inference(record):
    """The receiver alternates between answering at once and after `delay_s` (4 s phases,
    so a neighbour's burst of CPU hits both kinds alike)."""
    delay_s, phase_s, timeout_s = 3.0, 4.0, 10.0
    cycles = max(2, round(PROFILE.slow_s / (2 * phase_s)))
    fast: list[Window] = []
    slow: list[Window] = []
    with otlp_receiver(status=200, delay_s=0.0) as receiver, LogTally() as tally:
        tel = telemetry(receiver.endpoint, export_timeout_s=timeout_s)
        loop = Loop(tel)
        loop.start()
        try:
            loop.measure(2.0)
            for _ in range(cycles):
                receiver.delay_s = 0.0
                fast.append(loop.measure(phase_s))
                receiver.delay_s = delay_s
                slow.append(loop.measure(phase_s))
        finally:
            loop.finish()
            receiver.delay_s = 0.0
            tel.shutdown()
    f, s = _combined(*fast), _combined(*slow)
    cpu_ratio = _ratio(s.median_frames_per_cpu_s, f.median_frames_per_cpu_s)
    record(
        "collector-slow",
        fault=f"OTLP/HTTP receiver answering every export after {delay_s:.0f} s "
        f"(exporter timeout {timeout_s:.0f} s), alternating with a prompt one",
        duration=f"{cycles} x ({phase_s:.0f} s prompt + {phase_s:.0f} s slow)",
        measured=f"longest frame gap: slow {s.worst_gap_s * 1000:.0f} ms, prompt "
        f"{f.worst_gap_s * 1000:.0f} ms (bound {STALL_BOUND_S * 1000:.0f}); throughput "
        f"slow/prompt {cpu_ratio:.3f} per CPU-s (floor {THROUGHPUT_FLOOR}), "
        f"{_ratio(s.median_fps, f.median_fps):.3f} wall; {receiver.requests} exports",
        lost=f"spans over the SDK queue while exports wait "
        f"({tally.queue_full} queue-full warnings logged; "
        f"{tel.counting.total} spans produced)",
    )
    assert not loop.errors, repr(loop.errors[:3])
    assert s.worst_gap_s <= STALL_BOUND_S
    assert cpu_ratio >= THROUGHPUT_FLOOR


def test_gateway_outage_behind_the_agent_queue(collectors, record, tmp_path):
    """agent.yaml (file_storage sending queue) -> gateway.yaml, TLS and token as shipped."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    tls = self_signed_tls(tmp_path)
    token = "token-" + os.urandom(12).hex()
    gateway_port = free_port()
    gateway = gateway_env(tls, token, gateway_port)
    agent_env = base_env(
        VISIONTEL_GATEWAY_ENDPOINT=f"localhost:{gateway_port}",
        VISIONTEL_GATEWAY_TOKEN=token,
        VISIONTEL_GATEWAY_CA_FILE=str(tls["ca"]),
        VISIONTEL_AGENT_QUEUE_DIR=str(tmp_path / "agent-queue"),
        VISIONTEL_NODE_NAME="edge-1",
    )
    override = file_override(tmp_path, "gateway", ["traces"], keep=["span_metrics"])
    collectors.start("gateway", [CONFIG_DIR / "gateway.yaml", override], gateway)
    collectors.start("agent", [CONFIG_DIR / "agent.yaml"], agent_env)

    provider = TracerProvider()
    exporter = OTLPSpanExporter(
        endpoint=f"http://{agent_env['VISIONTEL_OTLP_HTTP_ENDPOINT']}/v1/traces", timeout=10
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # every span acknowledged
    tracer = provider.get_tracer("edge")
    sent: dict[str, list[int]] = {"before": [], "during": [], "after": []}

    def send(phase: str, seconds: float, rate_hz: float = 20.0) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with tracer.start_as_current_span(
                f"frame {phase}", attributes={"visiontel.frame.sequence": len(sent[phase])}
            ) as span:
                sent[phase].append(span.get_span_context().span_id)
            time.sleep(1 / rate_hz)

    send("before", 3)
    collectors.stop("gateway")
    outage_started = time.monotonic()
    send("during", PROFILE.outage_s)
    collectors.restart("gateway")
    outage_s = time.monotonic() - outage_started
    send("after", 3)
    provider.shutdown()

    wanted = {f"{sid:016x}" for ids in sent.values() for sid in ids}
    deadline, started = time.monotonic() + 90, time.monotonic()
    stored: set[str] = set()
    while time.monotonic() < deadline:
        stored = {s["spanId"] for s in read_spans(tmp_path / "gateway-out.jsonl")}
        if wanted <= stored:
            break
        time.sleep(1)
    drained_in = time.monotonic() - started
    missing = {p: sum(1 for s in ids if f"{s:016x}" not in stored) for p, ids in sent.items()}
    record(
        "gateway-outage-agent-queue",
        fault="gateway.yaml stopped and restarted behind agent.yaml (file_storage sending "
        "queue, TLS + bearer token); spans sent to the agent throughout",
        duration=f"{outage_s:.0f} s gateway outage",
        measured=f"spans sent {len(wanted)} ({len(sent['during'])} during the outage); in the "
        f"gateway's output: {len(wanted & stored)}; all there {drained_in:.0f} s after the "
        "restart",
        lost=", ".join(f"{p}: {n}" for p, n in missing.items()),
    )
    assert sent["during"], "nothing was sent during the outage"
    assert not any(missing.values()), (missing, collectors.log("agent")[-3000:])
