"""A local observability stack on loopback: otelcol-visiontel (local.yaml), Jaeger, Prometheus.

    python collector-config/stack/stack.py up      # start, print the endpoints, stop on Ctrl-C

Binaries come from the environment (the `stack` nox session sets them from
collector-config/toolchain.py): VISIONTEL_OTELCOL, VISIONTEL_JAEGER, VISIONTEL_PROMETHEUS.
Every process gets free loopback ports, is waited for until its readiness endpoint
answers, and is stopped by the PID this module started (SIGTERM, then SIGKILL after a
grace period) — nothing else on the machine is touched.

Logs: Loki cannot be obtained here (see docs/collector.md), so the collector runs
local.yaml with its logs pipeline re-pointed at a `file` exporter; everything else in
local.yaml (receivers, privacy processors, traces to Jaeger, metrics to Prometheus) is
the recipe as shipped.

Standard library only, so the tests and the CLI share it.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any

HERE = pathlib.Path(__file__).resolve().parent
CONFIG_DIR = HERE.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary(variable: str) -> str:
    value = os.environ.get(variable, "")
    if not value or not os.access(value, os.X_OK):
        raise SystemExit(f"{variable} must name an executable (run `nox -s stack`)")
    return value


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float, log: pathlib.Path) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited ({proc.returncode}) before {url} was ready:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last = response.status
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {timeout} s (last: {last}):\n{_tail(log)}")


def _tail(log: pathlib.Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Stack:
    """Start with start(), stop with stop(); endpoints are attributes."""

    def __init__(self, workdir: pathlib.Path,
                 jaeger_tls: tuple[pathlib.Path, pathlib.Path] | None = None) -> None:
        self.workdir = workdir
        self.jaeger_tls = jaeger_tls  # (cert, key): Jaeger's OTLP receiver speaks TLS
        self._procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        self.otlp_grpc = f"127.0.0.1:{free_port()}"
        self.otlp_http = f"127.0.0.1:{free_port()}"
        self.jaeger_otlp = f"127.0.0.1:{free_port()}"
        self.jaeger_query = f"127.0.0.1:{free_port()}"
        self.prometheus = f"127.0.0.1:{free_port()}"
        self.exporter = f"127.0.0.1:{free_port()}"
        self.collector_health = f"127.0.0.1:{free_port()}"
        self.collector_metrics_port = free_port()
        self.logs_file = workdir / "otelcol-logs.jsonl"

    # -- processes -------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None
               ) -> tuple[subprocess.Popen[bytes], pathlib.Path]:
        log_path = self.workdir / f"{name}.log"
        log = log_path.open("wb")
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            cwd=self.workdir,
        )
        self._procs.append((name, proc, log))
        return proc, log_path

    def start_jaeger(self) -> None:
        env = {
            "JAEGER_OTLP_GRPC_ENDPOINT": self.jaeger_otlp,
            "JAEGER_QUERY_HTTP_ENDPOINT": self.jaeger_query,
            "JAEGER_QUERY_GRPC_ENDPOINT": f"127.0.0.1:{free_port()}",
            "JAEGER_HEALTH_ENDPOINT": f"127.0.0.1:{free_port()}",
        }
        args = [_binary("VISIONTEL_JAEGER"), "--config", str(HERE / "jaeger.yaml")]
        if self.jaeger_tls:
            tls = self.workdir / "jaeger-tls.yaml"
            cert, key = self.jaeger_tls
            tls.write_text(json.dumps({"receivers": {"otlp": {"protocols": {"grpc": {
                "tls": {"cert_file": str(cert), "key_file": str(key)}}}}}}))
            args += ["--config", str(tls)]
        proc, log = self._spawn("jaeger", args, env)
        wait_ready(f"http://{env['JAEGER_HEALTH_ENDPOINT']}/status", proc, 60, log)

    def start_prometheus(self) -> None:
        config = self._prometheus_config()
        args = [
            _binary("VISIONTEL_PROMETHEUS"),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
            f"--web.listen-address={self.prometheus}",
            "--enable-feature=exemplar-storage",
            "--web.enable-remote-write-receiver",
        ]
        proc, log = self._spawn("prometheus", args)
        wait_ready(f"http://{self.prometheus}/-/ready", proc, 60, log)

    def _prometheus_config(self) -> pathlib.Path:
        """prometheus/prometheus.yaml with our ports, a 1 s scrape interval, absolute rules path.

        Text substitution keeps the shipped file the single source of the config.
        """
        text = (CONFIG_DIR / "prometheus" / "prometheus.yaml").read_text()
        text = text.replace('"localhost:9464"', f'"{self.exporter}"')
        text = text.replace('"localhost:8888"', f'"127.0.0.1:{self.collector_metrics_port}"')
        text = text.replace("scrape_interval: 15s", "scrape_interval: 1s")
        text = text.replace("rules/visiontel.rules.yaml",
                            str(CONFIG_DIR / "prometheus" / "rules" / "visiontel.rules.yaml"))
        path = self.workdir / "prometheus.yaml"
        path.write_text(text)
        return path

    def collector_env(self) -> dict[str, str]:
        return {
            "VISIONTEL_OTLP_GRPC_ENDPOINT": self.otlp_grpc,
            "VISIONTEL_OTLP_HTTP_ENDPOINT": self.otlp_http,
            "VISIONTEL_HEALTH_ENDPOINT": self.collector_health,
            "VISIONTEL_OTELCOL_METRICS_PORT": str(self.collector_metrics_port),
            "VISIONTEL_JAEGER_OTLP_ENDPOINT": self.jaeger_otlp,
            "VISIONTEL_PROMETHEUS_EXPORTER_ENDPOINT": self.exporter,
        }

    def start_collector(self) -> None:
        override = self.workdir / "logs-to-file.yaml"
        override.write_text(json.dumps({
            "exporters": {"file/logs": {"path": str(self.logs_file), "flush_interval": "200ms"}},
            "service": {"pipelines": {"logs": {"exporters": ["file/logs"]}}},
        }))
        self.start_otelcol("otelcol", [CONFIG_DIR / "local.yaml", override], self.collector_env())

    def start_otelcol(self, name: str, configs: list[pathlib.Path], env: dict[str, str]) -> None:
        """Another otelcol-visiontel process; env must set VISIONTEL_HEALTH_ENDPOINT."""
        args = [_binary("VISIONTEL_OTELCOL")]
        for config in configs:
            args += ["--config", str(config)]
        proc, log = self._spawn(name, args, env)
        wait_ready(f"http://{env['VISIONTEL_HEALTH_ENDPOINT']}/", proc, 60, log)

    def stop_one(self, name: str) -> None:
        """Stop (SIGTERM) the process started under `name`; it can be started again."""
        for entry in list(self._procs):
            if entry[0] == name:
                self._terminate([entry])
                self._procs.remove(entry)

    def start(self) -> Stack:
        try:
            self.start_jaeger()
            self.start_prometheus()
            self.start_collector()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._terminate(list(reversed(self._procs)))
        self._procs.clear()

    @staticmethod
    def _terminate(entries: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]]) -> None:
        for _, proc, _ in entries:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, log in entries:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            log.close()

    def log(self, name: str) -> str:
        return _tail(self.workdir / f"{name}.log", 200)

    # -- query APIs ----------------------------------------------------------------------
    def get_json(self, url: str) -> Any:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def jaeger_trace(self, trace_id: str) -> dict[str, Any]:
        """One trace (spans, processes) from Jaeger's query API; {} when not found yet."""
        try:
            data = self.get_json(f"http://{self.jaeger_query}/api/traces/{trace_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return {}
            raise
        traces = data.get("data") or []
        return dict(traces[0]) if traces else {}

    def promql(self, query: str) -> list[dict[str, Any]]:
        url = f"http://{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        data = self.get_json(url)
        assert data["status"] == "success", data
        return list(data["data"]["result"])


def main(argv: list[str]) -> int:
    if argv != ["up"]:
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="visiontel-stack-") as work:
        stack = Stack(pathlib.Path(work)).start()
        print(f"OTLP gRPC   {stack.otlp_grpc}\nOTLP HTTP   http://{stack.otlp_http}\n"
              f"Jaeger UI   http://{stack.jaeger_query}\nPrometheus  http://{stack.prometheus}\n"
              f"logs file   {stack.logs_file}\nCtrl-C stops the stack.", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
