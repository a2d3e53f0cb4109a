"""A local observability stack on loopback: otelcol-visiontel (local.yaml), Jaeger, Prometheus,
and Zipkin, whose Lens UI is the trace view a person opens (see stack_zipkin.py).

    python collector-config/stack/stack.py up      # start, print the endpoints, stop on Ctrl-C

Binaries come from the environment (the `stack` nox session sets them from
collector-config/toolchain.py): VISIONTEL_OTELCOL, VISIONTEL_JAEGER, VISIONTEL_PROMETHEUS,
VISIONTEL_ZIPKIN (a jar, run with the `java` on PATH). Zipkin binds port 0 and logs its port.
Every process gets loopback ports picked at random outside the kernel's ephemeral range
(see pick_port), is waited for until it logs that it is ready and its readiness endpoint
answers, and is started again on fresh ports when one was taken (the binaries cannot bind
port 0 and say which port they got); it is stopped by the PID this module started
(SIGTERM, then SIGKILL after a grace period) — nothing else on the machine is touched.

Logs: Loki cannot be obtained here (see docs/collector.md), so the stack runs VictoriaLogs
(VISIONTEL_VICTORIALOGS; see stack_victorialogs.py) and the collector runs local.yaml with
the shipped overlay logs-victorialogs.yaml, which sends the logs pipeline there over
OTLP/HTTP; everything else in local.yaml (receivers, privacy processors, traces to Jaeger,
metrics to Prometheus) is the recipe as shipped.

Standard library only, so the tests and the CLI share it.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import IO, Any

HERE = pathlib.Path(__file__).resolve().parent
CONFIG_DIR = HERE.parent
SPAN_METRICS = CONFIG_DIR / "span-metrics.yaml"  # overlay: RED metrics from spans
# Its sibling, also when this file is loaded by path (visiontel's demo does).
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import stack_victorialogs  # noqa: E402
import stack_zipkin  # noqa: E402
from stack_logs import log_tail as _tail  # noqa: E402
from stack_logs import read_log as _read  # noqa: E402

# --- ports ---------------------------------------------------------------------------------
# A port found free by binding port 0 and closing the socket can be taken again before the
# binary binds it: by the next such pick, by another process's server, and — it lies in
# the kernel's ephemeral range — by any outgoing connection. Ports are picked instead at
# random outside that range (no outgoing connection ever gets one), never twice in one
# process, and a binary that still finds one taken is started again on fresh ports.
_EPHEMERAL_FILE = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range")
# Assumed when that file cannot be read (not Linux): Linux's default range starts at 32768
# and the IANA one (macOS, Windows) at 49152; this covers both.
_EPHEMERAL_FALLBACK = (32768, 65535)
_LOWEST = 10000  # below: the registered ports services on a machine tend to use
_MIN_CANDIDATES = 1000  # fewer outside the ephemeral range: pick from the fallback's outside
ATTEMPTS = 5  # starts of one binary on fresh ports before giving up
IN_USE = "address already in use"  # how Go's net package reports EADDRINUSE
_picked: set[int] = set()
_picked_lock = threading.Lock()
_random = random.Random(os.urandom(16))  # not the global one: tests may seed that


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(field) for field in _EPHEMERAL_FILE.read_text().split())
    except (OSError, ValueError):
        return _EPHEMERAL_FALLBACK
    return low, high


def _candidate_ranges() -> list[range]:
    low, high = _ephemeral_range()
    ranges = [r for r in (range(_LOWEST, low), range(high + 1, 65536)) if len(r)]
    if sum(len(r) for r in ranges) < _MIN_CANDIDATES:
        low, high = _EPHEMERAL_FALLBACK
        ranges = [range(_LOWEST, low)]
    return ranges


def pick_port() -> int:
    """A loopback port for a binary to listen on: random, outside the ephemeral range, never
    handed out twice by this process. Not checked free (that check could only go stale):
    start the binary with Stack's methods, which start it again on fresh ports when it
    reports one taken."""
    ranges = _candidate_ranges()
    weights = [len(r) for r in ranges]
    with _picked_lock:
        if len(_picked) >= sum(weights):
            raise RuntimeError("every port of the range stack.py picks from is handed out")
        while True:
            port = _random.choice(_random.choices(ranges, weights)[0])
            if port not in _picked:
                _picked.add(port)
                return port


free_port = pick_port  # the name tests/reliability imports


class PortInUse(RuntimeError):
    """A binary could not listen on a port it was given (another process holds it)."""


def repick(env: dict[str, str], names: tuple[str, ...]) -> None:
    """Fresh ports, in place, for the variables `names` of env ("host:port" or "port")."""
    for name in names:
        if name in env:
            head, colon, _ = env[name].rpartition(":")
            env[name] = f"{head}{colon}{pick_port()}"


def with_fresh_ports(start: Callable[[int], None], what: str, attempts: int = ATTEMPTS) -> None:
    """Call start(attempt) until it does not raise PortInUse; start must pick its own ports
    anew on each attempt (attempt counts from 0)."""
    last: PortInUse | None = None
    for attempt in range(attempts):
        try:
            start(attempt)
            return
        except PortInUse as exc:
            last = exc
    ranges = ", ".join(f"{r.start}-{r.stop - 1}" for r in _candidate_ranges())
    raise RuntimeError(
        f"{what} found a port taken on each of {attempts} starts, on fresh ports each time "
        f"(picked from {ranges}); last: {last}. Give every port it listens on through the "
        "environment (a port its configuration fixes is never re-picked), or stop what holds "
        "so many ports of that range"
    )


def _binary(variable: str) -> str:
    value = os.environ.get(variable, "")
    if not value or not os.access(value, os.X_OK):
        raise SystemExit(f"{variable} must name an executable (run `nox -s stack`)")
    return value


def _prometheus_web_assets(binary: str) -> list[str]:
    """`--web.local-assets` for a Prometheus unpacked from Debian's package by toolchain.py.

    Debian's binary looks for its web UI's templates and scripts under the absolute
    /usr/share/prometheus/web/, which an unpacked (not installed) package does not have:
    its pages answer "Error reading base template". The assets sit beside the binary.
    """
    web = pathlib.Path(binary).resolve().parent.parent / "share" / "prometheus" / "web"
    return [f"--web.local-assets={web}/"] if (web / "templates").is_dir() else []


# What each binary logs once it has bound every port and started every component.
OTELCOL_READY = "Everything is ready. Begin running and processing data."
PROMETHEUS_READY = "Server is ready to receive web requests."


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], timeout: float, log: pathlib.Path, marker: str
) -> None:
    """Until proc has logged `marker` and `url` answers 200.

    The log line is what ties readiness to this process: with a port taken, `url` may be
    answered by whatever else holds it. Raises PortInUse when the process logs that a port
    was taken (it then exits, or would run without that listener), RuntimeError on any
    other exit or at the timeout.
    """
    deadline = time.monotonic() + timeout
    last: object = "no ready line in the log yet"
    while time.monotonic() < deadline:
        exited = proc.poll() is not None
        text = _read(log)
        if IN_USE in text:
            if not exited:
                proc.kill()
                proc.wait()
            raise PortInUse(f"{_first(text, IN_USE)} (log: {log})")
        if exited:
            raise RuntimeError(f"exited ({proc.returncode}) before {url} was ready:\n{_tail(log)}")
        if marker in text:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
                    last = response.status
            except (urllib.error.URLError, OSError) as exc:
                last = exc
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {timeout} s (last: {last}):\n{_tail(log)}")


def _first(text: str, needle: str) -> str:
    return next(line.strip() for line in text.splitlines() if needle in line)


# Variables of the recipes (collector-config/*.yaml) that name an address the collector
# itself listens on; the others name its peers. tests/collector/test_recipes.py checks
# that every listening address of every recipe is one of these.
LISTEN_VARIABLES = (
    "VISIONTEL_OTLP_GRPC_ENDPOINT",
    "VISIONTEL_OTLP_HTTP_ENDPOINT",
    "VISIONTEL_HEALTH_ENDPOINT",
    "VISIONTEL_OTELCOL_METRICS_PORT",
    "VISIONTEL_PROMETHEUS_EXPORTER_ENDPOINT",
    "VISIONTEL_TAILSAMPLING_GRPC_ENDPOINT",
    "VISIONTEL_GATEWAY_GRPC_ENDPOINT",
)


class Stack:
    """Start with start(), stop with stop(); endpoints are attributes.

    The address attributes hold the ports the processes really listen on once started:
    a start that found a port taken picks fresh ones. Read them after starting.
    """

    def __init__(
        self, workdir: pathlib.Path, jaeger_tls: tuple[pathlib.Path, pathlib.Path] | None = None
    ) -> None:
        self.workdir = workdir
        self.jaeger_tls = jaeger_tls  # (cert, key): Jaeger's OTLP receiver speaks TLS
        self._procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        self._started: set[str] = set()  # names started before: a restart keeps its ports
        self._pick_jaeger_ports()
        self.prometheus = f"127.0.0.1:{pick_port()}"
        self._pick_collector_ports()
        self.victorialogs = stack_victorialogs.VictoriaLogs(
            f"127.0.0.1:{pick_port()}", workdir / "victorialogs-data"
        )
        self.zipkin = ""  # "127.0.0.1:port", set by start_zipkin: Zipkin picks its own port
        self._zipkin_bridge: stack_zipkin.Bridge | None = None

    # -- processes -------------------------------------------------------------------
    def _spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], pathlib.Path]:
        log_path = self.workdir / f"{name}.log"
        log = log_path.open("wb")
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=self.workdir,
        )
        self._procs.append((name, proc, log))
        return proc, log_path

    def _run(
        self, name: str, args: list[str], env: dict[str, str] | None, url: str, marker: str
    ) -> None:
        """Spawn and wait until ready; on PortInUse the process is gone and forgotten."""
        proc, log = self._spawn(name, args, env)
        try:
            wait_ready(url, proc, 60, log, marker)
        except PortInUse:
            entry = next(e for e in self._procs if e[1] is proc)
            self._terminate([entry])
            self._procs.remove(entry)
            raise

    def _pick_jaeger_ports(self) -> None:
        self.jaeger_otlp = f"127.0.0.1:{pick_port()}"
        self.jaeger_query = f"127.0.0.1:{pick_port()}"
        self._jaeger_query_grpc = f"127.0.0.1:{pick_port()}"
        self._jaeger_health = f"127.0.0.1:{pick_port()}"

    def start_jaeger(self) -> None:
        args = [_binary("VISIONTEL_JAEGER"), "--config", str(HERE / "jaeger.yaml")]
        if self.jaeger_tls:
            tls = self.workdir / "jaeger-tls.yaml"
            cert, key = self.jaeger_tls
            tls.write_text(
                json.dumps(
                    {
                        "receivers": {
                            "otlp": {
                                "protocols": {
                                    "grpc": {"tls": {"cert_file": str(cert), "key_file": str(key)}}
                                }
                            }
                        }
                    }
                )
            )
            args += ["--config", str(tls)]

        def start(attempt: int) -> None:
            if attempt:
                self._pick_jaeger_ports()
            env = {
                "JAEGER_OTLP_GRPC_ENDPOINT": self.jaeger_otlp,
                "JAEGER_QUERY_HTTP_ENDPOINT": self.jaeger_query,
                "JAEGER_QUERY_GRPC_ENDPOINT": self._jaeger_query_grpc,
                "JAEGER_HEALTH_ENDPOINT": self._jaeger_health,
            }
            url = f"http://{self._jaeger_health}/status"
            self._run("jaeger", args, env, url, OTELCOL_READY)

        with_fresh_ports(start, "Jaeger")

    def start_zipkin(self) -> None:
        """Zipkin (Lens UI, in-memory) and the OTLP bridge in front of it; both bind port 0,
        so nothing is retried here: no port of theirs can be taken before they bind it."""
        jar = os.environ.get("VISIONTEL_ZIPKIN", "")
        if not os.path.isfile(jar):
            raise SystemExit("VISIONTEL_ZIPKIN must name Zipkin's server jar (run `nox -s stack`)")
        args, env = stack_zipkin.command(jar)
        proc, log = self._spawn("zipkin", args, env)
        self.zipkin = stack_zipkin.wait_ready(proc, log, 180)
        self._zipkin_bridge = stack_zipkin.Bridge(self.zipkin)

    def start_victorialogs(self) -> None:
        """The log store; start it before start_collector, whose logs pipeline it receives.
        A Stack on a folder used before reopens the logs stored there."""
        server = self.victorialogs

        def start(attempt: int) -> None:
            if attempt:
                server.address = f"127.0.0.1:{pick_port()}"
            args = server.command(_binary("VISIONTEL_VICTORIALOGS"))
            self._run("victorialogs", args, None, server.health_url, server.ready_marker)

        with_fresh_ports(start, "VictoriaLogs")

    def start_prometheus(self) -> None:
        """Prometheus scraping the stack's collector: start it after start_collector, whose
        ports (picked anew should one be taken) its configuration names."""
        config = self._prometheus_config()

        def start(attempt: int) -> None:
            if attempt:
                self.prometheus = f"127.0.0.1:{pick_port()}"
            binary = _binary("VISIONTEL_PROMETHEUS")
            args = [
                binary,
                *_prometheus_web_assets(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                f"--web.listen-address={self.prometheus}",
                "--enable-feature=exemplar-storage",
                "--web.enable-remote-write-receiver",
            ]
            self._run(
                "prometheus", args, None, f"http://{self.prometheus}/-/ready", PROMETHEUS_READY
            )

        with_fresh_ports(start, "Prometheus")

    def _prometheus_config(self) -> pathlib.Path:
        """prometheus/prometheus.yaml with our ports, a 1 s scrape interval, absolute rules path.

        Text substitution keeps the shipped file the single source of the config.
        """
        text = (CONFIG_DIR / "prometheus" / "prometheus.yaml").read_text()
        text = text.replace('"localhost:9464"', f'"{self.exporter}"')
        text = text.replace('"localhost:8888"', f'"127.0.0.1:{self.collector_metrics_port}"')
        text = text.replace("scrape_interval: 15s", "scrape_interval: 1s")
        text = text.replace(
            "rules/visiontel.rules.yaml",
            str(CONFIG_DIR / "prometheus" / "rules" / "visiontel.rules.yaml"),
        )
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
            stack_victorialogs.ENDPOINT_VARIABLE: self.victorialogs.otlp_endpoint,
        }

    def _pick_collector_ports(self) -> None:
        self.otlp_grpc = f"127.0.0.1:{pick_port()}"
        self.otlp_http = f"127.0.0.1:{pick_port()}"
        self.collector_health = f"127.0.0.1:{pick_port()}"
        self.collector_metrics_port = pick_port()
        self.exporter = f"127.0.0.1:{pick_port()}"

    def _adopt_collector_env(self, env: dict[str, str]) -> None:
        """The ports start_otelcol settled on (fresh ones, should one have been taken)."""
        self.otlp_grpc = env["VISIONTEL_OTLP_GRPC_ENDPOINT"]
        self.otlp_http = env["VISIONTEL_OTLP_HTTP_ENDPOINT"]
        self.collector_health = env["VISIONTEL_HEALTH_ENDPOINT"]
        self.collector_metrics_port = int(env["VISIONTEL_OTELCOL_METRICS_PORT"])
        self.exporter = env["VISIONTEL_PROMETHEUS_EXPORTER_ENDPOINT"]

    def start_collector(self) -> None:
        # Logs to the stack's VictoriaLogs through the overlay users run (start it first).
        # RED metrics from spans too, for the frame-latency dashboard (span-metrics.yaml).
        configs = [CONFIG_DIR / "local.yaml", stack_victorialogs.OVERLAY, SPAN_METRICS]
        if self._zipkin_bridge is not None:  # traces to Zipkin too, besides local.yaml's Jaeger
            to_zipkin = self.workdir / "traces-to-zipkin.yaml"
            to_zipkin.write_text(
                json.dumps(
                    stack_zipkin.collector_override(
                        self._zipkin_bridge.address, ["otlp_grpc/jaeger", "span_metrics"]
                    )
                )
            )
            configs.append(to_zipkin)
        env = self.collector_env()
        self.start_otelcol("otelcol", configs, env)
        self._adopt_collector_env(env)

    def start_otelcol(self, name: str, configs: list[pathlib.Path], env: dict[str, str]) -> None:
        """Another otelcol-visiontel process; env must set VISIONTEL_HEALTH_ENDPOINT.

        Should a port be taken, the LISTEN_VARIABLES of env get fresh ports, in place (read
        env after this returns), and the collector starts again. Not when `name` was
        started before by this Stack: peers were configured with its ports, so a restart
        keeps them, and fails with PortInUse if one was taken meanwhile.
        """
        args = [_binary("VISIONTEL_OTELCOL")]
        for config in configs:
            args += ["--config", str(config)]

        def start(attempt: int) -> None:
            if attempt:
                repick(env, LISTEN_VARIABLES)
            url = f"http://{env['VISIONTEL_HEALTH_ENDPOINT']}/"
            self._run(name, args, env, url, OTELCOL_READY)

        if name in self._started:
            try:
                start(0)
            except PortInUse as exc:
                raise PortInUse(
                    f"{name} was restarted on the ports its peers know and one is taken now "
                    f"by another process: {exc}"
                ) from None
        else:
            with_fresh_ports(start, name)
            self._started.add(name)

    def stop_one(self, name: str) -> None:
        """Stop (SIGTERM) the process started under `name`; it can be started again."""
        for entry in list(self._procs):
            if entry[0] == name:
                self._terminate([entry])
                self._procs.remove(entry)

    def start(self) -> Stack:
        # The collector before Prometheus, whose configuration names the collector's ports
        # as they are once it runs; Jaeger first, whose OTLP port the collector sends to.
        try:
            self.start_victorialogs()  # before the collector, which sends it the logs
            self.start_jaeger()
            self.start_zipkin()
            self.start_collector()
            self.start_prometheus()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # One at a time, newest first: a collector's shutdown sends what its batch processors
        # still hold to backends that are still up (they started before it, so stop after).
        for entry in reversed(self._procs):
            self._terminate([entry])
        self._procs.clear()
        if self._zipkin_bridge is not None:
            self._zipkin_bridge.stop()
            self._zipkin_bridge = None

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

    def zipkin_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """One trace's spans from Zipkin's API; [] when not there yet."""
        return stack_zipkin.trace(self.zipkin, trace_id)

    def lens_url(self, trace_id: str | None = None) -> str:
        """Zipkin's UI, or one trace in it."""
        return stack_zipkin.lens_url(self.zipkin, trace_id)

    def frame_trace(self, services: tuple[str, ...], timeout: float = 10.0) -> str | None:
        """A recent trace with spans from every one of services (searched by the first)."""
        return stack_zipkin.frame_trace(self.zipkin, services, timeout)

    def promql(self, query: str) -> list[dict[str, Any]]:
        url = f"http://{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        data = self.get_json(url)
        assert data["status"] == "success", data
        return list(data["data"]["result"])


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="stack.py",
        description="A local observability stack on loopback: otelcol-visiontel (local.yaml), "
        "Jaeger, Prometheus, Zipkin and VictoriaLogs. The binaries come from VISIONTEL_OTELCOL, "
        "VISIONTEL_JAEGER, VISIONTEL_PROMETHEUS, VISIONTEL_ZIPKIN and VISIONTEL_VICTORIALOGS "
        "(`nox -s stack -- up` sets them from collector-config/toolchain.py).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("up", help="start the stack, print its endpoints, stop on Ctrl-C")
    parser.parse_args(argv)  # a bad or missing command: usage and exit code 2
    with tempfile.TemporaryDirectory(prefix="visiontel-stack-") as work:
        stack = Stack(pathlib.Path(work)).start()
        print(
            f"OTLP gRPC   {stack.otlp_grpc}\nOTLP HTTP   http://{stack.otlp_http}\n"
            f"Zipkin UI   {stack.lens_url()}\n"
            f"Jaeger API  http://{stack.jaeger_query}/api/traces/<trace id>  (JSON, no UI)\n"
            f"Prometheus  http://{stack.prometheus}\n"
            f"Logs UI     {stack.victorialogs.ui_url}  (VictoriaLogs; LogsQL at "
            f"{stack.victorialogs.query_url})\n"
            "Ctrl-C stops the stack.",
            flush=True,
        )
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
