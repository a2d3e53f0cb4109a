"""Helpers shared by the collector-config tests (paths, ports, processes, env)."""

from __future__ import annotations

import pathlib
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "collector-config"
RECIPES = ("local.yaml", "agent.yaml", "gateway.yaml", "tailsampling.yaml")
SESSION_HINT = "run `nox -s collector` (it builds otelcol-visiontel and fetches promtool)"

# Process start/stop, readiness and ports are the stack's (collector-config/stack/stack.py):
# ports are picked, not probed, and a collector that finds one taken is started again on
# fresh ones by Stack.start_otelcol.
sys.path.insert(0, str(CONFIG_DIR / "stack"))
import stack as stack_module  # noqa: E402
from stack import LISTEN_VARIABLES, Stack, pick_port  # noqa: E402

__all__ = [
    "CONFIG_DIR",
    "LISTEN_VARIABLES",
    "RECIPES",
    "ROOT",
    "SESSION_HINT",
    "Stack",
    "pick_port",
    "stack_module",
]


def load_yaml(path: pathlib.Path) -> Any:
    import yaml  # installed by the collector session; imported late so collection never needs it

    return yaml.safe_load(path.read_text())


def collector_env(**extra: str) -> dict[str, str]:
    """Loopback endpoints on picked ports for the addresses every recipe takes from env.

    Read the addresses back from the dict after starting the collector: a start that found
    a port taken has put fresh ones in.
    """
    env = {
        "VISIONTEL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{pick_port()}",
        "VISIONTEL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{pick_port()}",
        "VISIONTEL_HEALTH_ENDPOINT": f"127.0.0.1:{pick_port()}",
        "VISIONTEL_OTELCOL_METRICS_PORT": str(pick_port()),
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


T = TypeVar("T")


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 45.0) -> T:
    """probe()'s first truthy answer, polled every 0.5 s; fails naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")
