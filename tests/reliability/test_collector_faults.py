"""Collector down, collector slow, gateway down behind the agent's persistent queue.

The application is an in-process inference loop (inference_support.Loop): visiontel.torch
on a small CPU model, the SDK's BatchSpanProcessor and OTLP/HTTP exporter, one trace per
frame. Spans are counted where they are produced and in the real collector's file output.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time

from inference_support import (
    EXPORT_TIMEOUT_S,
    LogTally,
    Loop,
    Telemetry,
    Window,
    telemetry,
)
from reliability_support import (
    CONFIG_DIR,
    PROFILE,
    Collectors,
    RssPeak,
    base_env,
    file_override,
    free_port,
    gateway_env,
    read_spans,
    settle,
)
from secrets_support import otlp_receiver, self_signed_tls

# Throughput per unit of the application's own work, fault / healthy: a frame's CPU time on
# the inference thread (time.thread_time_ns() read in that thread; garbage collection left
# out), in bare forwards of the same model that the thread runs every REFERENCE_EVERY frames
# (inference_support.Loop); asserted as healthy cost / fault cost >= 0.95. A fault that
# makes the inference path do 5 % more work per frame fails; one that makes it wait is the
# stall bound's.
# Null band (tests/reliability/null_band.py: these runs with the fault switched off, 5 runs
# per layout at load average 0.9-1.2 and 5 more at 3.2-4.5, 2026-12-04): slow-collector
# layout 0.995-1.007, collector-down layout 0.987-1.009. In the same runs the quantities
# that do not cancel the shared machine's speed read: median frames per process-CPU s (the
# old, 0.80 floor) 0.86-1.14, plain inference-thread CPU per frame 0.84-1.09, wall-clock
# 0.89-1.14. GC is left out because it comes in ~130 ms gen-2 collections a few times a
# phase: counted in, the same null band is 0.96-1.04 (its pauses are in the stall bound,
# its time per frame in the row).
THROUGHPUT_FLOOR = 0.95
# With the collector down, and only then, the floor is lower: the SDK's own per-drop log
# record (see test_collector_down_then_restarted) costs the inference thread a measured 3-7 %
# (0.930-0.969 in 12 runs, lower under load; 0.993-0.999 with that logger quieted). That is a
# real cost of the SDK's drop path, not noise; until visiontel or the SDK removes it, this
# floor still fails any outage cost above a tenth of a frame's work.
OUTAGE_FLOOR = 0.90
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


def _work_ratio(fault: Window, healthy: Window) -> float:
    """Frames per unit of the inference thread's own work, fault / healthy (see
    THROUGHPUT_FLOOR): below 1 when the fault makes each frame cost the thread more."""
    return _ratio(healthy.frame_cost, fault.frame_cost)


def _throughput(fault: Window, healthy: Window, label: str, floor: float = THROUGHPUT_FLOOR) -> str:
    """The row's throughput figures: the asserted one first, the noisy ones after it."""
    return (
        f"throughput {label} {_work_ratio(fault, healthy):.3f} per unit of inference-thread "
        f"work (floor {floor}; a frame costs {fault.frame_cpu_us:.0f} vs "
        f"{healthy.frame_cpu_us:.0f} us of that thread's CPU, GC excluded, = "
        f"{fault.frame_cost:.3f} vs {healthy.frame_cost:.3f} bare forwards; GC on the thread "
        f"{fault.gc_us_per_frame:.0f} vs {healthy.gc_us_per_frame:.0f} us/frame, not asserted); "
        f"{_ratio(fault.median_frames_per_cpu_s, healthy.median_frames_per_cpu_s):.3f} "
        f"per process-CPU s, {_ratio(fault.median_fps, healthy.median_fps):.3f} wall "
        f"({fault.median_fps:.0f} vs {healthy.median_fps:.0f} frames/s), not asserted"
    )


def _combined(*windows: Window) -> Window:
    return Window(
        frames=sum(w.frames for w in windows),
        wall_s=sum(w.wall_s for w in windows),
        cpu_s=sum(w.cpu_s for w in windows),
        thread_cpu_s=sum(w.thread_cpu_s for w in windows),
        references=sum(w.references for w in windows),
        reference_cpu_s=sum(w.reference_cpu_s for w in windows),
        gc_cpu_s=sum(w.gc_cpu_s for w in windows),
        worst_gap_s=max(w.worst_gap_s for w in windows),
        chunks=[c for w in windows for c in w.chunks],
    )


@dataclasses.dataclass
class Outage:
    """What outage_phases measured: the loop's windows around the collector's outage."""

    loop: Loop
    tel: Telemetry
    up_before: Window
    down: Window
    up_after: Window
    rss_half: float  # RSS growth at half the outage, MB
    rss_growth: float  # over the outage and the window after it, MB
    growth_up: float  # over the collector-up window before it, MB
    at_stop: tuple[int, int]  # LogTally snapshots
    at_restart: tuple[int, int]
    stopped_at: float
    restarted_at: float

    @property
    def up(self) -> Window:
        return _combined(self.up_before, self.up_after)


def outage_phases(collectors: Collectors, workdir: pathlib.Path, *, fault: bool = True) -> Outage:
    """The collector-down run: up, down (stopped for the outage), up again. With
    fault=False the collector stays up throughout (the null comparison of null_band.py)."""
    env = base_env()
    override = file_override(workdir, "collector", ["traces"])
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
        if fault:
            collectors.stop("collector")
        stopped_at = time.monotonic()
        first_half = loop.measure(PROFILE.outage_s / 2)
        rss_half = rss.peak - rss_before
        down = _combined(first_half, loop.measure(PROFILE.outage_s / 2))
        if fault:
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
    return Outage(
        loop=loop,
        tel=tel,
        up_before=up_before,
        down=down,
        up_after=up_after,
        rss_half=rss_half,
        rss_growth=rss_growth,
        growth_up=growth_up,
        at_stop=at_stop,
        at_restart=at_restart,
        stopped_at=stopped_at,
        restarted_at=restarted_at,
    )


def test_collector_down_then_restarted(collectors, record, tmp_path):
    run = outage_phases(collectors, tmp_path)
    loop, tel, down, up = run.loop, run.tel, run.down, run.up
    arrived = settle(tmp_path / "collector-out.jsonl", key=lambda s: int(s["traceId"], 16))
    produced = tel.counting.per_trace
    seq_start = loop.started_at

    def lost_between(t0: float, t1: float) -> tuple[int, int]:
        frames = [t for t, s in loop.trace_of.items() if t0 <= seq_start[s] < t1]
        made = sum(produced[t] for t in frames)
        return made, made - sum(min(arrived.get(t, 0), produced[t]) for t in frames)

    # Spans still in the SDK queue when the collector stops belong to the outage: "up"
    # counts frames started more than one export cycle (schedule delay + timeout) before.
    made_up, lost_up = lost_between(0, run.stopped_at - RECOVERY_BOUND_S)
    export_errors = sum(run.at_stop)
    full_down = run.at_restart[0] - run.at_stop[0]
    failed_down = run.at_restart[1] - run.at_stop[1]
    made_down, lost_down = lost_between(run.stopped_at, run.restarted_at)
    made_after, lost_after = lost_between(run.restarted_at + RECOVERY_BOUND_S, float("inf"))
    incomplete_after = sorted(
        seq_start[s] - run.restarted_at
        for t, s in loop.trace_of.items()
        if seq_start[s] >= run.restarted_at and arrived.get(t, 0) < produced[t]
    )
    recovered_in = incomplete_after[-1] if incomplete_after else 0.0
    work_ratio = _work_ratio(down, up)
    record(
        "collector-down",
        fault="otelcol-visiontel (local.yaml) stopped, then restarted, under an instrumented "
        "inference loop (torch stage spans, BatchSpanProcessor queue 8192 / batch 2048, OTLP/HTTP, "
        f"exporter timeout {EXPORT_TIMEOUT_S:.0f} s)",
        duration=f"{PROFILE.outage_s:.0f} s down, {up.wall_s:.0f} s up around it",
        measured=f"{_throughput(down, up, 'down/up', OUTAGE_FLOOR)}; "
        f"longest frame gap {down.worst_gap_s * 1000:.0f} ms (bound "
        f"{STALL_BOUND_S * 1000:.0f}); RSS growth {run.rss_growth:.1f} MB (bound "
        f"{RSS_BOUND_MB:.0f}; {run.rss_half:.1f} MB at half the outage, {run.growth_up:.1f} MB "
        "over the collector-up window before it); spans arriving complete again "
        f"{recovered_in:.1f} s after the restart (bound {RECOVERY_BOUND_S:.0f})",
        lost=f"collector up (frames started >= {RECOVERY_BOUND_S:.0f} s before the stop): "
        f"{lost_up}/{made_up} spans ({export_errors} drops logged); down: "
        f"{lost_down}/{made_down} (logged: {failed_down} failed exports, "
        f"{full_down} queue-full warnings); produced >= "
        f"{RECOVERY_BOUND_S:.0f} s after restart: {lost_after}/{made_after}",
    )
    assert not loop.errors, repr(loop.errors[:3])
    # With the collector down the SDK's queue is full, and for every span it then drops the
    # SDK (1.45) builds a "Queue full" log record, caller lookup included, before its
    # DuplicateFilter discards it. 2026-12-04 this ratio read 0.93-0.95 (4 runs), and
    # 0.99-1.00 with that logger (opentelemetry.sdk._shared_internal) set to ERROR.
    assert work_ratio >= OUTAGE_FLOOR, (
        "the inference thread did more work per frame with the collector down: "
        f"{_throughput(down, up, 'down/up', OUTAGE_FLOOR)}"
    )
    assert down.worst_gap_s <= STALL_BOUND_S
    assert run.rss_growth <= RSS_BOUND_MB
    assert made_after > 0 and lost_after == 0
    # While the collector is up, a span is lost only with a log line saying so: the SDK's
    # queue-full warning or its failed-export error (a batch that timed out).
    assert lost_up == 0 or export_errors > 0
    assert lost_down == 0 or failed_down + full_down > 0


SLOW_DELAY_S, SLOW_PHASE_S, SLOW_EXPORT_TIMEOUT_S = 3.0, 4.0, 10.0
SLOW_CYCLES = max(2, round(PROFILE.slow_s / (2 * SLOW_PHASE_S)))


@dataclasses.dataclass
class Alternation:
    """What alternating_phases measured: the prompt and the slow phases, combined."""

    loop: Loop
    tel: Telemetry
    prompt: Window
    slow: Window
    requests: int
    queue_full: int


def alternating_phases(delay_s: float = SLOW_DELAY_S) -> Alternation:
    """The receiver alternates between answering at once and after `delay_s`
    (SLOW_PHASE_S phases, so a neighbour's burst of CPU hits both kinds alike). With
    delay_s=0 both kinds are prompt (the null comparison of null_band.py)."""
    fast: list[Window] = []
    slow: list[Window] = []
    with otlp_receiver(status=200, delay_s=0.0) as receiver, LogTally() as tally:
        tel = telemetry(receiver.endpoint, export_timeout_s=SLOW_EXPORT_TIMEOUT_S)
        loop = Loop(tel)
        loop.start()
        try:
            loop.measure(2.0)
            for _ in range(SLOW_CYCLES):
                receiver.delay_s = 0.0
                fast.append(loop.measure(SLOW_PHASE_S))
                receiver.delay_s = delay_s
                slow.append(loop.measure(SLOW_PHASE_S))
        finally:
            loop.finish()
            receiver.delay_s = 0.0
            tel.shutdown()
    return Alternation(
        loop, tel, _combined(*fast), _combined(*slow), receiver.requests, tally.queue_full
    )


def test_slow_collector_never_stalls_inference(record):
    run = alternating_phases()
    f, s = run.prompt, run.slow
    work_ratio = _work_ratio(s, f)
    record(
        "collector-slow",
        fault=f"OTLP/HTTP receiver answering every export after {SLOW_DELAY_S:.0f} s "
        f"(exporter timeout {SLOW_EXPORT_TIMEOUT_S:.0f} s), alternating with a prompt one",
        duration=f"{SLOW_CYCLES} x ({SLOW_PHASE_S:.0f} s prompt + {SLOW_PHASE_S:.0f} s slow)",
        measured=f"longest frame gap: slow {s.worst_gap_s * 1000:.0f} ms, prompt "
        f"{f.worst_gap_s * 1000:.0f} ms (bound {STALL_BOUND_S * 1000:.0f}); "
        f"{_throughput(s, f, 'slow/prompt')}; {run.requests} exports",
        lost=f"spans over the SDK queue while exports wait "
        f"({run.queue_full} queue-full warnings logged; "
        f"{run.tel.counting.total} spans produced)",
    )
    assert not run.loop.errors, repr(run.loop.errors[:3])
    assert s.worst_gap_s <= STALL_BOUND_S
    assert work_ratio >= THROUGHPUT_FLOOR, (
        "the inference thread did more work per frame with a slow collector: "
        f"{_throughput(s, f, 'slow/prompt')}"
    )


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
