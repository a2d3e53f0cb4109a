"""Two agents -> gateway -> tail sampling -> Jaeger, all on loopback with TLS and the
bearer token of the recipes. The gateway is stopped for 30 s while both agents keep
receiving spans, and one agent is restarted in the middle of the outage; after the
gateway comes back every span is in Jaeger (agent.yaml's persistent queue held them).
Run with `nox -s stack`.
"""

from __future__ import annotations

import os
import pathlib
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from collector_support import CONFIG_DIR, Stack, pick_port
from otlp_json import post, span, traces

pytestmark = pytest.mark.e2e
OUTAGE_S = 30.0
TRACES_PER_AGENT_AND_PHASE = 6
TOKEN = "test-token-" + os.urandom(8).hex()
AGENTS = ("agent-a", "agent-b")


def _collector(**env: str) -> dict[str, str]:
    """Environment of one collector: its own health and self-metrics ports, plus `env`."""
    return {
        "VISIONTEL_HEALTH_ENDPOINT": f"127.0.0.1:{pick_port()}",
        "VISIONTEL_OTELCOL_METRICS_PORT": str(pick_port()),
        **env,
    }


def _metric(env: dict[str, str], name: str, labels: str = "") -> float:
    """Sum of a collector's own metric `name` over the series whose labels hold `labels`."""
    url = f"http://127.0.0.1:{env['VISIONTEL_OTELCOL_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] in (name, f"{name}_total") and labels in series:
            total += float(value)
    return total


def _wait_for(probe: Callable[[], float], at_least: float, what: str, timeout: float = 30) -> float:
    """Poll `probe` until it reaches `at_least`; returns its value."""
    deadline = time.monotonic() + timeout
    value = probe()
    while value < at_least and time.monotonic() < deadline:
        time.sleep(0.25)
        value = probe()
    assert value >= at_least, f"{what}: {value} after {timeout} s, expected at least {at_least}"
    return value


def _queued(env: dict[str, str]) -> float:
    """Trace batches an agent holds unsent (its persistent queue, in flight included)."""
    return _metric(env, "otelcol_exporter_queue_size", 'data_type="traces"')


@pytest.fixture(scope="module")
def tier(
    stack_binaries: None,
    tmp_path_factory: pytest.TempPathFactory,
    tls_files: dict[str, pathlib.Path],
) -> Iterator[tuple[Stack, dict[str, dict[str, str]]]]:
    work = tmp_path_factory.mktemp("tier")
    stack = Stack(work, jaeger_tls=(tls_files["cert"], tls_files["key"]))
    try:
        stack.start_jaeger()
        stack.start_prometheus()
        # Each collector is started before the next one's environment names its port:
        # a start that found a port taken has picked fresh ones (in place, in its env).
        tail = _collector(
            VISIONTEL_TAILSAMPLING_GRPC_ENDPOINT=f"127.0.0.1:{pick_port()}",
            VISIONTEL_TAILSAMPLING_CERT_FILE=str(tls_files["cert"]),
            VISIONTEL_TAILSAMPLING_KEY_FILE=str(tls_files["key"]),
            VISIONTEL_JAEGER_OTLP_ENDPOINT=f"localhost:{stack.jaeger_otlp.split(':')[1]}",
            VISIONTEL_JAEGER_CA_FILE=str(tls_files["ca"]),
            VISIONTEL_TRACE_SAMPLE_PERCENT="100",  # keep everything: we count spans
        )
        stack.start_otelcol("tailsampling", [CONFIG_DIR / "tailsampling.yaml"], tail)
        gateway = _collector(
            VISIONTEL_GATEWAY_GRPC_ENDPOINT=f"127.0.0.1:{pick_port()}",
            VISIONTEL_GATEWAY_TOKEN=TOKEN,
            VISIONTEL_GATEWAY_CERT_FILE=str(tls_files["cert"]),
            VISIONTEL_GATEWAY_KEY_FILE=str(tls_files["key"]),
            VISIONTEL_TAILSAMPLING_DNS="127.0.0.1",
            VISIONTEL_TAILSAMPLING_PORT=tail["VISIONTEL_TAILSAMPLING_GRPC_ENDPOINT"].split(":")[1],
            VISIONTEL_TAILSAMPLING_CA_FILE=str(tls_files["ca"]),
            VISIONTEL_PROMETHEUS_REMOTE_WRITE_URL=f"http://{stack.prometheus}/api/v1/write",
            VISIONTEL_PROMETHEUS_TOKEN="unused-by-this-prometheus",
            # Nothing listens there (it is never started): the gateway's logs go nowhere.
            VISIONTEL_LOKI_OTLP_ENDPOINT=f"http://127.0.0.1:{pick_port()}/otlp",
        )
        stack.start_otelcol("gateway", [CONFIG_DIR / "gateway.yaml"], gateway)
        gateway_port = gateway["VISIONTEL_GATEWAY_GRPC_ENDPOINT"].split(":")[1]
        agents = {
            name: _collector(
                VISIONTEL_OTLP_GRPC_ENDPOINT=f"127.0.0.1:{pick_port()}",
                VISIONTEL_OTLP_HTTP_ENDPOINT=f"127.0.0.1:{pick_port()}",
                VISIONTEL_GATEWAY_ENDPOINT=f"localhost:{gateway_port}",
                VISIONTEL_GATEWAY_TOKEN=TOKEN,
                VISIONTEL_GATEWAY_CA_FILE=str(tls_files["ca"]),
                VISIONTEL_AGENT_QUEUE_DIR=str(work / f"{name}-queue"),
                VISIONTEL_NODE_NAME=name,
            )
            for name in AGENTS
        }
        for name, env in agents.items():
            stack.start_otelcol(name, [CONFIG_DIR / "agent.yaml"], env)
        yield stack, {"tailsampling": tail, "gateway": gateway, **agents}
    finally:
        stack.stop()


def _send(agent_env: dict[str, str], phase: str, count: int) -> list[str]:
    """`count` two-span traces through one agent; returns their trace ids."""
    ids = []
    for i in range(count):
        trace_id = os.urandom(16).hex()
        root, child = os.urandom(8).hex(), os.urandom(8).hex()
        node = agent_env["VISIONTEL_NODE_NAME"]
        payload = traces(
            {"service.name": f"camera-{node}"},
            [
                span(trace_id, root, f"frame {phase} {i}", {"visiontel.frame.sequence": i}),
                span(trace_id, child, "detect", {"visiontel.model.name": "yolo"}, parent=root),
            ],
        )
        post(agent_env["VISIONTEL_OTLP_HTTP_ENDPOINT"], "traces", payload)
        ids.append(trace_id)
    return ids


def test_gateway_outage_loses_no_span(tier: tuple[Stack, dict[str, dict[str, str]]]) -> None:
    stack, envs = tier
    agents = [envs[name] for name in AGENTS]
    sent = [tid for agent in agents for tid in _send(agent, "before", TRACES_PER_AGENT_AND_PHASE)]
    # The first batches are through the gateway (tail sampling has them) before it stops.
    _wait_for(
        lambda: _metric(envs["tailsampling"], "otelcol_receiver_accepted_spans"),
        2 * len(sent),
        "spans the tail-sampling tier accepted before the outage",
    )

    stack.stop_one("gateway")
    outage_started = time.monotonic()
    held = {name: _queued(envs[name]) for name in AGENTS}

    def send_round() -> None:
        """Two traces per agent, then until each agent holds their batch: gateway down."""
        for name in AGENTS:
            sent.extend(_send(envs[name], "during", 2))
        for name in AGENTS:
            held[name] = _wait_for(
                lambda name=name: _queued(envs[name]),
                held[name] + 1,
                f"trace batches {name} holds during the outage",
            )

    # Rounds until half the outage, an agent restart, rounds until the end: at least one
    # round on each side of the restart whatever the pace.
    for phase_end in (OUTAGE_S / 2, OUTAGE_S):
        send_round()
        while time.monotonic() - outage_started < phase_end:
            send_round()
        if phase_end < OUTAGE_S:
            # An agent restarted mid-outage keeps what it had queued: the queue is on
            # disk (file_storage), not in the process.
            stack.stop_one("agent-a")
            stack.start_otelcol("agent-a", [CONFIG_DIR / "agent.yaml"], envs["agent-a"])
            _wait_for(
                lambda: _queued(envs["agent-a"]),
                held["agent-a"],
                "trace batches agent-a holds after its restart (its disk queue)",
            )
    stack.start_otelcol("gateway", [CONFIG_DIR / "gateway.yaml"], envs["gateway"])
    sent += [tid for agent in agents for tid in _send(agent, "after", TRACES_PER_AGENT_AND_PHASE)]

    # decision_wait (10 s) + the agents' retry back-off (up to 10 s) + export.
    deadline = time.monotonic() + 90
    missing = set(sent)
    while missing and time.monotonic() < deadline:
        missing = {tid for tid in missing if len(stack.jaeger_trace(tid).get("spans", [])) < 2}
        time.sleep(2)
    assert not missing, (
        f"{len(missing)} of {len(sent)} traces incomplete in Jaeger after the outage\n"
        f"--- gateway ---\n{stack.log('gateway')[-3000:]}\n"
        f"--- agent-a ---\n{stack.log('agent-a')[-3000:]}"
    )
