"""Helpers shared by the collector-config tests (paths, ports, processes, env)."""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "collector-config"
RECIPES = ("local.yaml", "agent.yaml", "gateway.yaml", "tailsampling.yaml")
SESSION_HINT = "run `nox -s collector` (it builds otelcol-visiontel and fetches promtool)"


def load_yaml(path: pathlib.Path) -> Any:
    import yaml  # installed by the collector session; imported late so collection never needs it

    return yaml.safe_load(path.read_text())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http_ok(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll url until it answers 2xx; fail early if proc has exited."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return
                last = response.status
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout} s (last: {last})")


class Collector:
    """One otelcol-visiontel process started by a test, stopped by its own PID."""

    def __init__(
        self,
        binary: pathlib.Path,
        configs: list[pathlib.Path],
        env: dict[str, str],
        log: pathlib.Path,
    ) -> None:
        self.env = env
        self.log = log
        self.health = f"http://{env['VISIONTEL_HEALTH_ENDPOINT']}/"
        args = [str(binary)]
        for config in configs:
            args += ["--config", str(config)]
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            args, env={**os.environ, **env}, stdout=self._log_file, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        try:
            wait_http_ok(self.health, timeout, self.proc)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- collector log ---\n{self.output()}") from None

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the collector flushes its pipelines and exits
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log_file.close()


def collector_env(**extra: str) -> dict[str, str]:
    """Loopback endpoints on free ports for the addresses every recipe takes from env."""
    env = {
        "VISIONTEL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{free_port()}",
        "VISIONTEL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{free_port()}",
        "VISIONTEL_HEALTH_ENDPOINT": f"127.0.0.1:{free_port()}",
        "VISIONTEL_OTELCOL_METRICS_PORT": str(free_port()),
    }
    env.update(extra)
    return env


def required_env(text: str) -> set[str]:
    """Names referenced as ${env:NAME} without a :-default in a collector config."""
    return set(re.findall(r"\$\{env:([A-Z0-9_]+)\}", text))


def dummy_env(recipe: pathlib.Path, tls: dict[str, pathlib.Path]) -> dict[str, str]:
    """A value for every variable the recipe requires: files for *_FILE, else a placeholder."""
    env: dict[str, str] = {}
    for name in required_env(recipe.read_text()):
        if name.endswith("_CA_FILE"):
            env[name] = str(tls["ca"])
        elif name.endswith("_CERT_FILE"):
            env[name] = str(tls["cert"])
        elif name.endswith("_KEY_FILE"):
            env[name] = str(tls["key"])
        elif name.endswith("_URL"):
            env[name] = "https://127.0.0.1:9/api/v1/write"
        elif name.endswith("_ENDPOINT"):
            env[name] = "127.0.0.1:9"
        elif name.endswith("_DNS"):
            env[name] = "127.0.0.1"
        else:
            env[name] = "dummy-value-from-test"
    return env
