"""The offline spool (visiontel-spool) under the real collector: down and back, the
application killed and restarted during the outage, the spool full.

Spans are counted where they are produced and in the collector's file output, as in
test_collector_faults.py; the spool's own figures come from the exporter's stats().
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

from inference_support import (
    EXPORT_TIMEOUT_S,
    Counting,
    LogTally,
    Loop,
    SmallDetector,
    Telemetry,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from reliability_support import CONFIG_DIR, PROFILE, base_env, file_override, settle

import visiontel.torch as vt
from visiontel.spool import SpoolSpanExporter, dropped_counts

HERE = pathlib.Path(__file__).resolve().parent
SPOOL_MAX_BYTES = 256 * 2**20  # the default
FULL_MAX_BYTES = 2**20  # the spool-full row: a spool far smaller than the outage's spans
RECOVERY_BOUND_S = 30.0  # backlog replayed after the collector is back


class DiskPeak:
    """Bytes of *.batch files in a spool directory, sampled every 100 ms on a thread of its
    own: the largest seen, and when it was first seen empty after `mark()`."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory, self.peak = directory, 0
        self.marked_at: float | None = None
        self.emptied_at: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _size(self) -> tuple[int, int]:
        sizes = []
        for path in self.directory.glob("*.batch"):
            try:
                sizes.append(path.stat().st_size)
            except FileNotFoundError:
                pass  # replayed between listing and stat
        return sum(sizes), len(sizes)

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            size, files = self._size()
            self.peak = max(self.peak, size)
            if self.marked_at is not None and self.emptied_at is None and files == 0:
                self.emptied_at = time.monotonic()

    def mark(self) -> None:
        self.marked_at = time.monotonic()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


class SpoolLog(logging.Handler):
    """Counts visiontel.spool's loss reports (the suite runs without pytest's capture)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reports = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "lost since the last report" in record.getMessage():
            self.reports += 1


def _spool_telemetry(exporter: SpoolSpanExporter) -> Telemetry:
    """inference_support.telemetry() with the spool in place of the plain OTLP exporter."""
    import torch

    torch.set_num_threads(1)
    provider = TracerProvider(resource=Resource.create({"service.name": "reliability"}))
    counting = Counting()
    provider.add_span_processor(counting)
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter, max_queue_size=8192, max_export_batch_size=2048, schedule_delay_millis=500
        )
    )
    model = vt.instrument_model(
        SmallDetector().eval(),
        name="reliability",
        tracer_provider=provider,
        meter_provider=MeterProvider(),
    )
    return Telemetry(provider, counting, model)


def test_spool_collector_down_then_restarted(collectors, record, tmp_path):
    env = base_env()
    override = file_override(tmp_path, "collector", ["traces"])
    collectors.start("collector", [CONFIG_DIR / "local.yaml", override], env)
    exporter = SpoolSpanExporter(
        directory=tmp_path / "spool",
        max_bytes=SPOOL_MAX_BYTES,
        endpoint=f"http://{env['VISIONTEL_OTLP_HTTP_ENDPOINT']}/v1/traces",
        timeout=EXPORT_TIMEOUT_S,
    )
    tel = _spool_telemetry(exporter)
    loop = Loop(tel)
    disk = DiskPeak(tmp_path / "spool" / "traces")
    tally = LogTally().__enter__()
    loop.start()
    try:
        loop.measure(3.0)
        loop.measure(PROFILE.window_s)
        collectors.stop("collector")
        stopped_at = time.monotonic()
        down = loop.measure(PROFILE.outage_s)
        at_restart = exporter.stats()
        collectors.restart("collector")
        restarted_at = time.monotonic()
        disk.mark()
        loop.measure(max(PROFILE.window_s, 10.0))
    finally:
        loop.finish()
        tel.shutdown()
        disk.close()
        tally.__exit__()
    arrived = settle(tmp_path / "collector-out.jsonl", key=lambda s: int(s["traceId"], 16))
    produced = tel.counting.per_trace
    seq_start = loop.started_at
    down_traces = [t for t, s in loop.trace_of.items() if stopped_at <= seq_start[s] < restarted_at]
    made = sum(produced.values())
    lost = sum(n - min(arrived.get(t, 0), n) for t, n in produced.items())
    made_down = sum(produced[t] for t in down_traces)
    lost_down = sum(produced[t] - min(arrived.get(t, 0), produced[t]) for t in down_traces)
    duplicates = sum(max(0, arrived.get(t, 0) - n) for t, n in produced.items())
    drained_in = disk.emptied_at - restarted_at if disk.emptied_at else float("inf")
    record(
        "spool-collector-down",
        fault="otelcol-visiontel (local.yaml) stopped, then restarted, under the instrumented "
        "inference loop of collector-down, exporting through visiontel-spool "
        "(BatchSpanProcessor queue 8192 / batch 2048, OTLP/HTTP, export timeout "
        f"{EXPORT_TIMEOUT_S:.0f} s, spool max {SPOOL_MAX_BYTES >> 20} MiB)",
        duration=f"{PROFILE.outage_s:.0f} s down",
        measured=f"spans produced {made} ({made_down} during the outage); spooled at the restart "
        f"{at_restart['batches']} batches, {at_restart['bytes'] / 2**20:.1f} MiB; largest spool on "
        f"disk {disk.peak / 2**20:.1f} MiB (bound {SPOOL_MAX_BYTES >> 20}); backlog replayed "
        f"{drained_in:.1f} s after the restart (bound {RECOVERY_BOUND_S:.0f}); longest frame gap "
        f"during the outage {down.worst_gap_s * 1000:.0f} ms (bound: the export timeout, "
        f"{EXPORT_TIMEOUT_S * 1000:.0f}); SDK queue-full warnings {tally.queue_full}",
        lost=f"{lost}/{made} spans (outage: {lost_down}/{made_down}); duplicates {duplicates}",
    )
    assert not loop.errors, repr(loop.errors[:3])
    assert made_down > 0 and at_restart["batches"] > 0
    assert lost == 0
    assert disk.peak <= SPOOL_MAX_BYTES
    assert down.worst_gap_s <= EXPORT_TIMEOUT_S
    assert drained_in <= RECOVERY_BOUND_S


def _ledger(proc: subprocess.Popen[str]) -> tuple[list[str], threading.Thread]:
    """The app's stdout lines, read on a thread as they come."""
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.strip())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return lines, thread


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)  # polling a ledger another thread fills


def _acked(lines: list[str], tag: str) -> set[str]:
    names: set[str] = set()
    for line in lines:
        if line.startswith("ack "):
            first, last, count = (int(x) for x in line.split()[1:])
            assert last - first + 1 == count, line  # one thread makes them: contiguous
            names.update(f"{tag}-{n}" for n in range(first, last + 1))
    return names


def test_spool_application_killed_during_outage(collectors, record, tmp_path):
    env = base_env()
    override = file_override(tmp_path, "collector", ["traces"])
    collectors.start("collector", [CONFIG_DIR / "local.yaml", override], env)
    app_env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "visiontel_spool",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://{env['VISIONTEL_OTLP_HTTP_ENDPOINT']}/v1/traces",
        "OTEL_EXPORTER_OTLP_TIMEOUT": str(EXPORT_TIMEOUT_S),
        "VISIONTEL_SPOOL_DIR": str(tmp_path / "spool"),
        "VISIONTEL_SPOOL_MAX_BACKOFF": "1",
    }

    def start(tag: str) -> tuple[subprocess.Popen[str], list[str]]:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "spool_app.py"), tag, "500"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=app_env,
        )
        lines, _ = _ledger(proc)
        _wait_for(lambda: "ready" in lines)
        return proc, lines

    first, first_lines = start("a")
    time.sleep(3.0)  # the healthy phase's length
    collectors.stop("collector")
    time.sleep(PROFILE.outage_s / 2)  # the first half of the outage
    acked_before_kill = len(_acked(first_lines, "a"))
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    killed_acked = _acked(first_lines, "a")
    spooled = len(list((tmp_path / "spool" / "traces").glob("*.batch")))
    second, second_lines = start("b")
    time.sleep(PROFILE.outage_s / 2)  # the second half, by the restarted application
    collectors.restart("collector")
    restarted_at = time.monotonic()
    time.sleep(8.0)  # the application running after the collector is back
    assert second.stdin is not None
    second.stdin.close()
    second.wait(timeout=60)
    _wait_for(lambda: any(line.startswith("done ") for line in second_lines))
    made_second = int(next(line for line in second_lines if line.startswith("done ")).split()[1])
    arrived = settle(tmp_path / "collector-out.jsonl", key=lambda s: s["name"])
    settled_in = time.monotonic() - restarted_at
    second_acked = _acked(second_lines, "b")
    lost_killed = sorted(killed_acked - set(arrived))
    lost_second = {f"b-{n}" for n in range(made_second)} - set(arrived)
    duplicates = sum(n - 1 for n in arrived.values() if n > 1)
    record(
        "spool-app-killed",
        fault="an application exporting through visiontel-spool (OTEL_TRACES_EXPORTER="
        "visiontel_spool, BatchSpanProcessor, 500 spans/s) SIGKILLed in the middle of a "
        "collector outage and started again on the same spool directory",
        duration=f"{PROFILE.outage_s:.0f} s outage, the kill at half of it",
        measured=f"spans the killed process had handed to the exporter: {len(killed_acked)} "
        f"({spooled} batches on disk at the kill); restarted process: {made_second} made, "
        f"{len(second_acked)} handed over; all read back {settled_in:.0f} s after the collector "
        "restart (8 s of the restarted process and its shutdown included)",
        lost=f"{len(lost_killed)}/{len(killed_acked)} of the killed process's handed-over spans, "
        f"{len(lost_second)}/{made_second} of the restarted one's; duplicates {duplicates}; "
        "spans still in the killed process's SDK queue (ended < 200 ms before the kill, never "
        "handed to an exporter) die with it, as with any in-process exporter",
    )
    assert acked_before_kill > 0 and spooled > 0
    assert lost_killed == [], lost_killed[:10]
    assert not lost_second, sorted(lost_second)[:10]


def test_spool_full_drops_only_the_oldest(collectors, record, tmp_path):
    env = base_env()
    override = file_override(tmp_path, "collector", ["traces"])
    collectors.start("collector", [CONFIG_DIR / "local.yaml", override], env)
    exporter = SpoolSpanExporter(
        directory=tmp_path / "spool",
        max_bytes=FULL_MAX_BYTES,
        endpoint=f"http://{env['VISIONTEL_OTLP_HTTP_ENDPOINT']}/v1/traces",
        timeout=EXPORT_TIMEOUT_S,
        max_backoff=1.0,
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "spool-full"}))
    provider.add_span_processor(
        BatchSpanProcessor(exporter, schedule_delay_millis=100, max_export_batch_size=512)
    )
    tracer = provider.get_tracer("spool-full")
    disk = DiskPeak(tmp_path / "spool" / "traces")
    log = SpoolLog()
    logging.getLogger("visiontel.spool").addHandler(log)
    before = dropped_counts().get(("traces", "full"), 0)
    made = 0

    def produce(seconds: float, rate: float = 1000.0) -> None:
        nonlocal made
        start, first = time.monotonic(), made
        while (elapsed := time.monotonic() - start) < seconds:
            tracer.start_span(f"f-{made}", attributes={"pad": "p" * 200}).end()
            made += 1
            ahead = (made - first) / rate - elapsed
            if ahead > 0:
                time.sleep(ahead)  # the application's pace

    try:
        produce(2.0)
        collectors.stop("collector")
        first_down = made
        produce(PROFILE.outage_s)
        last_down = made
        collectors.restart("collector")
        produce(3.0)
        provider.force_flush()
        assert exporter.force_flush(60_000)
        stats = exporter.stats()
    finally:
        provider.shutdown()
        disk.close()
        logging.getLogger("visiontel.spool").removeHandler(log)
    arrived: Counter[str] = settle(tmp_path / "collector-out.jsonl", key=lambda s: s["name"])
    lost = sorted(n for n in range(made) if f"f-{n}" not in arrived)
    reported = dropped_counts().get(("traces", "full"), 0) - before
    contiguous = lost == list(range(lost[0], lost[0] + len(lost))) if lost else True
    record(
        "spool-full",
        fault="otelcol-visiontel (local.yaml) stopped while 1000 spans/s (a 200-byte attribute "
        "each; BatchSpanProcessor batch 512) go to visiontel-spool with a "
        f"{FULL_MAX_BYTES >> 20} MiB spool",
        duration=f"{PROFILE.outage_s:.0f} s outage",
        measured=f"spans made {made} ({last_down - first_down} during the outage); largest "
        f"spool on disk {disk.peak / 2**10:.0f} KiB (bound {FULL_MAX_BYTES >> 10}); "
        f"dropped as reported by the exporter: {stats['dropped_items']} spans in "
        f"{stats['dropped_batches']} batches, visiontel.spool.dropped {reported}, "
        f"{log.reports} log line(s)",
        lost=f"{len(lost)} spans, n {lost[0] if lost else '-'}..{lost[-1] if lost else '-'}: "
        f"the oldest of the outage, one contiguous run ({contiguous}); every later span "
        "arrived; lost == reported",
    )
    assert lost, "the outage should overflow the spool"
    assert len(lost) == stats["dropped_items"] == reported
    assert contiguous and first_down - 512 <= lost[0] and lost[-1] < last_down
    assert disk.peak <= FULL_MAX_BYTES
    assert 1 <= log.reports <= 1 + PROFILE.outage_s // 60
