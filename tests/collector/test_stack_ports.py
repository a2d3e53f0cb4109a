"""Ports for the Go binaries (collector-config/stack/stack.py): picked, not probed, and a
binary that finds one taken is started again on fresh ones.

The binaries cannot bind port 0 and tell which port they got, so a port is picked for them
at random outside the kernel's ephemeral range; a port taken all the same (another
process's server) makes the binary exit with `address already in use`, and the stack
starts it again on fresh ports.
"""

from __future__ import annotations

import http.server
import pathlib
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from collector_support import (
    CONFIG_DIR,
    LISTEN_VARIABLES,
    RECIPES,
    Stack,
    collector_env,
    load_yaml,
    pick_port,
    stack_module,
)
from otlp_json import post, span, traces


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A loopback listener on a port the picker could have handed out."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", pick_port()))
        sock.listen()
        yield sock


@pytest.fixture
def answering_health() -> Iterator[int]:
    """Another process's health endpoint, as it were: answers 200 to every GET."""

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", pick_port()), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_picked_ports_are_outside_the_ephemeral_range_and_never_repeat() -> None:
    low, high = stack_module._ephemeral_range()
    ports = [pick_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
    assert not [p for p in ports if low <= p <= high], (low, high)
    assert all(1024 < p < 65536 for p in ports)


def test_a_taken_port_starts_the_collector_again_on_fresh_ones(
    start_collector: Any, listening: socket.socket
) -> None:
    taken = listening.getsockname()[1]
    env = collector_env(VISIONTEL_OTLP_HTTP_ENDPOINT=f"127.0.0.1:{taken}")
    before = dict(env)
    start_collector([CONFIG_DIR / "local.yaml"], env)
    assert _port(env["VISIONTEL_OTLP_HTTP_ENDPOINT"]) != taken
    assert env.keys() == before.keys() and env != before  # fresh ports, written into env
    # The collector really listens where env now says.
    payload = traces({"service.name": "ports"}, [span("ab" * 16, "cd" * 8, "s", {})])
    post(env["VISIONTEL_OTLP_HTTP_ENDPOINT"], "traces", payload)


def test_a_health_port_answered_by_another_process_is_not_taken_for_ready(
    start_collector: Any, answering_health: int, tmp_path: pathlib.Path
) -> None:
    env = collector_env(VISIONTEL_HEALTH_ENDPOINT=f"127.0.0.1:{answering_health}")
    start_collector([CONFIG_DIR / "local.yaml"], env, "fooled")
    assert _port(env["VISIONTEL_HEALTH_ENDPOINT"]) != answering_health
    log = (tmp_path / "fooled.log").read_text()
    assert stack_module.OTELCOL_READY in log and stack_module.IN_USE not in log


def test_a_restart_keeps_its_ports_and_says_when_one_was_taken(
    otelcol: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    stack = Stack(tmp_path)
    env = collector_env()
    try:
        stack.start_otelcol("c", [CONFIG_DIR / "local.yaml"], env)
        stack.stop_one("c")
        started = dict(env)
        stack.start_otelcol("c", [CONFIG_DIR / "local.yaml"], env)  # peers know these ports
        assert env == started
        stack.stop_one("c")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", _port(env["VISIONTEL_OTLP_GRPC_ENDPOINT"])))
            sock.listen()
            with pytest.raises(stack_module.PortInUse, match="restarted on the ports its peers"):
                stack.start_otelcol("c", [CONFIG_DIR / "local.yaml"], env)
        assert env == started
    finally:
        stack.stop()


def test_every_port_a_recipe_listens_on_is_one_the_stack_can_pick_again() -> None:
    """stack.LISTEN_VARIABLES is the list of what gets fresh ports on a retry."""
    listening: set[str] = set()
    for recipe in RECIPES:
        config = load_yaml(CONFIG_DIR / recipe)
        places: list[Any] = [
            *config.get("receivers", {}).values(),
            *config.get("extensions", {}).values(),
            *(v for k, v in config.get("exporters", {}).items() if k.split("/")[0] == "prometheus"),
            config["service"]["telemetry"]["metrics"],
        ]
        for place in places:
            text = str(place)
            found = re.findall(r"'(?:endpoint|port)': '\$\{env:([A-Z0-9_]+)", text)
            listening.update(found)
    # Client-side names (…_ENDPOINT of a peer) are not in receivers/extensions/telemetry.
    assert listening == set(LISTEN_VARIABLES), listening ^ set(LISTEN_VARIABLES)
