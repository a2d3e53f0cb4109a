"""Starts the three services, shows live progress, prints the report at the end."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import IO, TextIO

from visiontel._support.redact import redact_url
from visiontel.demo import _canary, _preflight, _report, _stack, _zoo
from visiontel.demo._config import DemoConfig
from visiontel.demo._errors import DemoError, UsageError
from visiontel.demo._frames import describe
from visiontel.demo._telemetry import SERVICE_NAMES

ROLES = ("sink", "detector", "source")
# Who sends to whom. A service binds its own port (0 unless a flag gives one) and says
# READY with it; only then does the launcher pass that port to its sender (PORT on stdin).
UPSTREAM = {"detector": "sink", "source": "detector"}
_STALL_S = 120.0  # no event from any service for this long: give up


@dataclass
class _Stats:
    started: float = field(default_factory=time.monotonic)
    first: float | None = None
    last: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    per_version: dict[str, int] = field(default_factory=dict)
    # (capture-to-result ms, detections) of each frame, per model version
    by_version: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    gpu: str = ""
    cpu_s: dict[str, float] = field(default_factory=dict)

    def add(self, latency_ns: int, version: str, detections: int = 0) -> None:
        self.last = time.monotonic()
        if self.first is None:
            self.first = self.last
        self.latencies_ms.append(latency_ns / 1e6)
        self.per_version[version] = self.per_version.get(version, 0) + 1
        self.by_version.setdefault(version, []).append((latency_ns / 1e6, detections))

    @property
    def fps(self) -> float:
        # From the first result on: start-up (importing torch) is not pipeline speed.
        if self.first is None or len(self.latencies_ms) < 2:
            return 0.0
        return (len(self.latencies_ms) - 1) / max(self.last - self.first, 1e-9)

    def line(self, frames: int) -> str:
        done = len(self.latencies_ms)
        of = f"/{frames}" if frames else ""
        if not done:
            return f"frames 0{of}  (starting: the detector loads torch and its models)"
        p50 = _report.percentile(self.latencies_ms, 50)
        p99 = _report.percentile(self.latencies_ms, 99)
        return (
            f"frames {done}{of}  {self.fps:6.1f} fps  latency p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"
        )


def _reader(role: str, stream: IO[str], events: queue.Queue[tuple[str, list[str]]]) -> None:
    for line in stream:
        events.put((role, line.split()))
    events.put((role, ["EOF"]))


def _spawn(role: str, config: DemoConfig, env: dict[str, str]) -> subprocess.Popen[str]:
    log = (config.run_path / f"{SERVICE_NAMES[role]}.stderr.log").open("w", encoding="utf-8")
    command = [sys.executable, "-m", "visiontel.demo._child", role, config.to_json()]
    stdin = subprocess.PIPE if role in UPSTREAM else subprocess.DEVNULL
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=log, stdin=stdin, text=True, env=env
    )


class Pipeline:
    def __init__(self, config: DemoConfig, out: TextIO) -> None:
        self.config = config
        self.out = out
        self.stats = _Stats()
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self.events: queue.Queue[tuple[str, list[str]]] = queue.Queue()
        self.interrupted = 0
        self.ports: dict[str, int] = {}  # role: the port it said READY with
        self._drawn = 0  # width of the progress line on a terminal

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if self.config.otlp_endpoint:
            # The services' exporters (visiontel._support.otlp) read it, and every other
            # OTEL_EXPORTER_OTLP_* variable, themselves.
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.config.otlp_endpoint
        else:
            env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        if self.config.stack:
            # The local stack's collector takes OTLP/HTTP on the port it picked: no
            # per-signal endpoint or protocol of the user's may send a signal elsewhere.
            for name in list(env):
                if name.startswith("OTEL_EXPORTER_OTLP_") and name.endswith(
                    ("_ENDPOINT", "_PROTOCOL")
                ):
                    env.pop(name)
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.config.otlp_endpoint or ""  # popped above
            env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
        if self.config.ultralytics:
            # The demo downloads nothing: no weights, fonts or update checks from Ultralytics.
            env["YOLO_OFFLINE"] = "1"
        for role in ROLES:
            process = _spawn(role, self.config, env)
            self.processes[role] = process
            assert process.stdout is not None
            threading.Thread(
                target=_reader, args=(role, process.stdout, self.events), daemon=True
            ).start()

    def _failure(self, role: str, message: str | None) -> DemoError:
        service = SERVICE_NAMES[role]
        if message and self.processes[role].returncode == UsageError.exit_code:
            # A flag's problem found by the service (a port taken since the launcher's
            # check): the same line and exit code as when the launcher finds it.
            return UsageError(message)
        if message:
            return DemoError(f"{service}: {message}")
        log = self.config.run_path / f"{service}.stderr.log"
        code = self.processes[role].poll()
        return DemoError(f"the {service} service stopped unexpectedly (exit {code}): see {log}")

    def _ready(self, role: str, port: int) -> None:
        """``role`` serves on ``port``: tell its sender, and the user once all serve."""
        self.ports[role] = port
        for sender, receiver in UPSTREAM.items():
            stdin = self.processes[sender].stdin
            if receiver == role and stdin is not None:
                # A sender that already stopped fails the run through its own EOF.
                with contextlib.suppress(BrokenPipeError):
                    stdin.write(f"PORT {port}\n")
                    stdin.flush()
        self.config.detector_port = self.ports.get("detector", self.config.detector_port)
        self.config.sink_port = self.ports.get("sink", self.config.sink_port)
        if set(UPSTREAM.values()) <= self.ports.keys():
            line = ", ".join(
                f"{SERVICE_NAMES[r]} 127.0.0.1:{self.ports[r]}" for r in ("detector", "sink")
            )
            self._print_line(f"listening: {line}")

    def _print_line(self, text: str) -> None:
        """A line of its own; on a terminal it replaces the progress line, redrawn after."""
        if self.out.isatty():
            text = "\r" + text.ljust(self._drawn)
        self.out.write(text + "\n")
        self.out.flush()

    def watch(self) -> None:
        """Follow the services until every one has exited; raise on the first failure."""
        live = self.out.isatty()
        last_draw = 0.0
        last_event = time.monotonic()
        open_streams = set(ROLES)
        errors: dict[str, str] = {}
        while open_streams:
            try:
                role, fields = self.events.get(timeout=0.25)
                last_event = time.monotonic()
            except queue.Empty:
                role, fields = "", []
            if time.monotonic() - last_event > _STALL_S:
                raise DemoError(f"no progress for {_STALL_S:.0f}s: the pipeline is stuck")
            kind = fields[0] if fields else ""
            if kind == "DONE" and len(fields) >= 4:
                version = fields[4] if len(fields) > 4 else ""
                detections = int(fields[3]) if fields[3].isdigit() else 0
                self.stats.add(int(fields[2]), version, detections)
            elif kind == "READY" and len(fields) == 2 and fields[1].isdigit():
                self._ready(role, int(fields[1]))
            elif kind == "ERROR":
                errors[role] = " ".join(fields[1:])
            elif kind == "CPU" and len(fields) == 2:
                self.stats.cpu_s[SERVICE_NAMES[role]] = float(fields[1])
            elif kind in ("GPU", "NOGPU"):
                self.stats.gpu = " ".join(fields[1:]) if kind == "NOGPU" else ""
            elif kind == "EOF":
                open_streams.discard(role)
                code = self.processes[role].wait()
                if code != 0 and not self.interrupted:
                    raise self._failure(role, errors.get(role))
            now = time.monotonic()
            if now - last_draw >= (0.25 if live else 2.0):
                last_draw = now
                text = self.stats.line(self.config.frames)
                self._drawn = len(text)
                self.out.write(f"\r{text}" if live else f"{text}\n")
                self.out.flush()
        self.out.write(("\r" if live else "") + self.stats.line(self.config.frames) + "\n")
        frames = len(self.stats.latencies_ms)
        if frames and self.stats.cpu_s:
            # Every thread of each process (exporters included) from its first frame on.
            each = ", ".join(f"{s} {c / frames * 1e3:.1f}" for s, c in self.stats.cpu_s.items())
            total = sum(self.stats.cpu_s.values()) / frames * 1e3
            self.out.write(f"CPU per frame: {total:.1f} ms ({each})\n")

    def interrupt(self) -> None:
        """First Ctrl-C: the source ends the stream and the rest drain. Second: stop all."""
        self.interrupted += 1
        source = self.processes.get("source")
        if self.interrupted == 1 and source is not None and source.poll() is None:
            source.send_signal(signal.SIGINT)
        else:
            self.stop()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
            if process.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()


def _print_report(config: DemoConfig, stats: _Stats, out: TextIO) -> None:
    run_dir = config.run_path
    write = out.write
    if stats.per_version and config.canary_version:
        shares = ", ".join(f"{v}: {n}" for v, n in sorted(stats.per_version.items()))
        write(f"frames per model version: {shares}\n")
    canary = (config.model_version, config.canary_version) if config.canary_version else None
    if canary and (config.otlp_endpoint or not config.telemetry):
        write("\n" + "\n".join(_canary.live_columns(stats.by_version, *canary)) + "\n")
    if config.otlp_endpoint:
        write(f"\nTelemetry went to {redact_url(config.otlp_endpoint)} as OTLP; look for the "
              "services frame-source, detector and tracker (namespace visiontel-demo), "
              f"visiontel.demo.run_id={config.run_id}.\n")  # fmt: skip
    elif config.telemetry:
        spans = _report.load_spans(run_dir)
        traces = _report.frame_traces(spans)
        typical = _report.typical_trace(traces)
        write("\n")
        if typical is None:
            write("no complete frame trace was written (see the *.stderr.log files)\n")
        else:
            write("\n".join(_report.waterfall(typical)) + "\n\n")
            if canary:
                write("\n".join(_canary.stage_columns(traces, *canary)) + "\n\n")
                write("\n".join(_canary.gate_table(run_dir, traces, *canary)) + "\n")
            else:
                write("\n".join(_report.stage_table(traces)) + "\n")
        write("\n" + "\n".join(_report.stream_health(run_dir)) + "\n")
        names, logs = _report.metric_summary(run_dir)
        write(f"\n{len(traces)} frame traces, {len(spans)} spans; metrics and log records:\n")
        for service in SERVICE_NAMES.values():
            write(f"  {service:<13} {', '.join(sorted(names[service])) or '-'}; "
                  f"{logs[service]} log records\n")  # fmt: skip
        write(f"\nOTLP JSON files in {run_dir}/:\n" + "\n".join(_report.files_summary(run_dir)))
        write("\n")
    if not config.telemetry:
        write("telemetry was off (--no-telemetry)\n")
    elif stats.gpu:
        write(f"\nno GPU found ({stats.gpu})\n")
    elif not config.otlp_endpoint:
        write("\nGPU (last reading):\n" + "\n".join(_report.gpu_summary(run_dir)) + "\n")


def run(config: DemoConfig, out: TextIO = sys.stdout) -> int:
    """Run the demo; returns the exit code. Raises DemoError on a problem a user can fix."""
    script = _stack.check() if config.stack else None
    if config.otlp_endpoint and not script:
        _preflight.endpoint(config.otlp_endpoint)
        if config.telemetry:
            _preflight.exporters()  # the stack's (OTLP/HTTP) come with visiontel[demo]
    _preflight.source(config)
    described = _zoo.check(config.model, config.weights)
    _preflight.ports(config)
    config.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    config.run_dir = str(_preflight.output(config).resolve())
    stack = None
    if script is not None:
        out.write("starting the local stack (collector, Jaeger, Zipkin, Prometheus, "
                  "VictoriaLogs)...\n")  # fmt: skip
        out.flush()
        stack = _stack.LocalStack(script, config.run_path / "stack")
        config.otlp_endpoint = stack.endpoint
    try:
        return _run_pipeline(config, out, stack, described)
    finally:
        if stack is not None:
            stack.stop()


def _run_pipeline(
    config: DemoConfig, out: TextIO, stack: _stack.LocalStack | None, model_line: str | None
) -> int:
    kind, name = describe(config.source)
    target = redact_url(config.otlp_endpoint) if config.otlp_endpoint else f"{config.run_dir}/"
    if kind == "synthetic":
        pace = f"at {config.fps:g} fps" if config.fps else "unpaced"
        name = f"{config.width}x{config.height}, {pace}"
    out.write(f"visiontel demo {config.run_id}: {kind} frames ({name}), model "
              f"{' + '.join(config.versions)}, telemetry "
              f"{'to ' + target if config.telemetry else 'off'}\n")  # fmt: skip
    if model_line is not None:
        out.write(f"{model_line}\n")
    out.flush()
    pipeline = Pipeline(config, out)
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pipeline.interrupt())
    try:
        pipeline.start()
        pipeline.watch()
    finally:
        signal.signal(signal.SIGINT, previous)
        pipeline.stop()
    _print_report(config, pipeline.stats, out)
    if stack is not None:
        out.write("\nThe local stack:\n" + "\n".join(stack.describe()) + "\n")
        if out.isatty() and not pipeline.interrupted:
            out.write("It stays up until Ctrl-C.\n")
            out.flush()
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    return 130 if pipeline.interrupted > 1 else 0
