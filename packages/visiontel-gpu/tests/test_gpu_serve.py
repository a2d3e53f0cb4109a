"""`visiontel-gpu serve` as a real subprocess on the NVML simulator: OTLP/HTTP push to a
local receiver (decoded with the OTLP protobuf definitions), a Prometheus scrape over
loopback on the port serve picked and reported, XID log records, and a clean exit on
SIGTERM."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from gpu_test_helpers import GUARD_S, eventually, two_gpus
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from visiontel.gpu._serve import _parser
from visiontel.gpu.testing import EVENT_XID

GPU0 = "GPU-00000000-1111-2222-3333-444455556666"
GPU1 = "GPU-00000001-1111-2222-3333-444455556666"


class Receiver:
    """A minimal OTLP/HTTP receiver on loopback that keeps what it was sent."""

    def __init__(self) -> None:
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.logs: list[ExportLogsServiceRequest] = []
        self.authorization: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.authorization.add(self.headers.get("authorization", ""))
                if self.path == "/v1/metrics":
                    receiver.metrics.append(ExportMetricsServiceRequest.FromString(body))
                elif self.path == "/v1/logs":
                    receiver.logs.append(ExportLogsServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def gauge(self, name: str, **attrs: object) -> list[float]:
        """Every value received for `name` whose attributes include `attrs`, oldest first."""
        values = []
        for request in list(self.metrics):
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name != name:
                            continue
                        data = metric.gauge if metric.HasField("gauge") else metric.sum
                        for dp in data.data_points:
                            got = {kv.key: _any(kv.value) for kv in dp.attributes}
                            if all(got.get(k) == v for k, v in attrs.items()):
                                values.append(dp.as_double or float(dp.as_int))
        return values

    def resource(self) -> dict[str, object]:
        rm = self.metrics[0].resource_metrics[0]
        return {kv.key: _any(kv.value) for kv in rm.resource.attributes}


def _any(value):
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_any(v) for v in value.array_value.values)
    return getattr(value, kind)


class Lines:
    """A child's stderr, read on a thread as it comes (an unread pipe fills and blocks it)."""

    def __init__(self, stream) -> None:
        self._lines: list[str] = []
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = GUARD_S) -> re.Match[str]:
        """The first line matching `pattern`; fails if the stream ends or `timeout` passes."""
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            return next((m for line in self._lines if (m := regex.search(line))), None)

        with self._changed:
            self._changed.wait_for(lambda: found() or self._closed, timeout)
            match = found()
        if match is None:
            pytest.fail(f"no line matching {pattern!r} on stderr:\n{self.text()}")
        return match

    def text(self, timeout: float = GUARD_S) -> str:
        """Everything read so far; once the child exited, everything it wrote."""
        self._thread.join(timeout)
        with self._changed:
            return "".join(self._lines)


def serve_command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("visiontel-gpu")
    if script.exists():
        return [str(script), "serve", *args]
    code = "from visiontel.gpu._serve import main; raise SystemExit(main())"
    return [sys.executable, "-c", code, "serve", *args]


@pytest.mark.slow
def test_serve_pushes_otlp_serves_prometheus_and_exits_cleanly(sim):
    receiver = Receiver()
    sim.write(two_gpus(**{"event.0": f"1,{EVENT_XID},48"}))
    env = {
        **os.environ,
        **sim.env(),
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "gpu-node-7",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t0ken",
        "VISIONTEL_GPU_INTERVAL": "0.1",
    }
    proc = subprocess.Popen(
        serve_command("--prometheus-port", "0"),  # the OS picks a free port; serve says which
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = Lines(proc.stderr)
    try:
        url = stderr.wait_for(r"Prometheus on (http://127\.0\.0\.1:[1-9]\d*/metrics)$")[1]
        eventually(lambda: receiver.gauge("hw.gpu.utilization", **{"hw.id": GPU0}), "OTLP metrics")
        assert receiver.gauge("hw.gpu.memory.usage", **{"hw.id": GPU1})[-1] == 11 * 1024**3
        resource = receiver.resource()
        assert resource["service.name"] == "gpu-node-7"
        assert resource["nvidia.gpu.count"] == 2
        assert receiver.authorization == {"Bearer t0ken"}  # OTLP headers from the environment

        def scrape() -> str:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    return r.read().decode()
            except OSError:
                return ""

        text = eventually(
            lambda: (t := scrape()) and "hw_gpu_memory_usage" in t and t, "a Prometheus scrape"
        )
        line = next(
            ln for ln in text.splitlines() if ln.startswith("hw_gpu_memory_usage") and GPU1 in ln
        )
        assert float(line.rsplit(" ", 1)[1]) == 11 * 1024**3

        # A value changed in the "driver" reaches the collector on a later export.
        sim.write(two_gpus(**{"gpu.1.memory.used": 42 * 1024**3}))
        eventually(
            lambda: receiver.gauge("hw.gpu.memory.usage", **{"hw.id": GPU1})[-1] == 42 * 1024**3,
            "the new memory value",
        )
        logs = eventually(lambda: receiver.logs, "the XID log record")
        record = logs[0].resource_logs[0].scope_logs[0].log_records[0]
        attrs = {kv.key: _any(kv.value) for kv in record.attributes}
        assert attrs["nvidia.gpu.xid"] == 48 and attrs["hw.id"] == GPU1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=GUARD_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    err = stderr.text()
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err
    receiver.server.shutdown()


def test_serve_without_driver_library_names_it_and_fails(sim, tmp_path):
    missing = tmp_path / "nowhere" / "libnvidia-ml.so.1"
    env = {**os.environ, **sim.env(), "OTEL_METRICS_EXPORTER": "none"}
    done = subprocess.run(
        serve_command("--nvml-library", str(missing)),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert str(missing) in done.stderr and "VISIONTEL_GPU_NVML_LIBRARY" in done.stderr


def test_prometheus_port_values(monkeypatch, caplog, capsys):
    def port(*argv: str) -> int | None:
        return _parser().parse_args(["serve", *argv]).prometheus_port

    monkeypatch.delenv("VISIONTEL_GPU_PROMETHEUS_PORT", raising=False)
    assert port() is None  # no endpoint unless asked for
    assert port("--prometheus-port", "0") == 0  # any free port
    assert port("--prometheus-port", "9400") == 9400
    monkeypatch.setenv("VISIONTEL_GPU_PROMETHEUS_PORT", "9400")
    assert port("--prometheus-port", "off") is None  # the flag wins over the environment
    monkeypatch.setenv("VISIONTEL_GPU_PROMETHEUS_PORT", "0")
    assert port() == 0
    monkeypatch.setenv("VISIONTEL_GPU_PROMETHEUS_PORT", "94OO")
    with caplog.at_level(logging.WARNING, logger="visiontel.gpu"):
        assert port() is None
    assert "VISIONTEL_GPU_PROMETHEUS_PORT='94OO' is not a port number" in caplog.text
    with pytest.raises(SystemExit) as exited:
        port("--prometheus-port", "70000")
    assert exited.value.code == 2
    assert "'70000' is not a port number (0-65535; 0 picks a free one) or off" in (
        capsys.readouterr().err
    )
