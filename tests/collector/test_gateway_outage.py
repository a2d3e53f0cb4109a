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
from collections.abc import Iterator

import pytest
from collector_support import CONFIG_DIR, Stack, free_port
from otlp_json import post, span, traces

pytestmark = pytest.mark.e2e
OUTAGE_S = 30.0
TRACES_PER_AGENT_AND_PHASE = 6
TOKEN = "test-token-" + os.urandom(8).hex()


def _collector(**env: str) -> dict[str, str]:
    """Environment of one collector: its own health and self-metrics ports, plus `env`."""
    return {
        "VISIONTEL_HEALTH_ENDPOINT": f"127.0.0.1:{free_port()}",
        "VISIONTEL_OTELCOL_METRICS_PORT": str(free_port()),
        **env,
    }


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
        tail = _collector(
            VISIONTEL_TAILSAMPLING_GRPC_ENDPOINT=f"127.0.0.1:{free_port()}",
            VISIONTEL_TAILSAMPLING_CERT_FILE=str(tls_files["cert"]),
            VISIONTEL_TAILSAMPLING_KEY_FILE=str(tls_files["key"]),
            VISIONTEL_JAEGER_OTLP_ENDPOINT=f"localhost:{stack.jaeger_otlp.split(':')[1]}",
            VISIONTEL_JAEGER_CA_FILE=str(tls_files["ca"]),
            VISIONTEL_TRACE_SAMPLE_PERCENT="100",  # keep everything: we count spans
        )
        gateway = _collector(
            VISIONTEL_GATEWAY_GRPC_ENDPOINT=f"127.0.0.1:{free_port()}",
            VISIONTEL_GATEWAY_TOKEN=TOKEN,
            VISIONTEL_GATEWAY_CERT_FILE=str(tls_files["cert"]),
            VISIONTEL_GATEWAY_KEY_FILE=str(tls_files["key"]),
            VISIONTEL_TAILSAMPLING_DNS="127.0.0.1",
            VISIONTEL_TAILSAMPLING_PORT=tail["VISIONTEL_TAILSAMPLING_GRPC_ENDPOINT"].split(":")[1],
            VISIONTEL_TAILSAMPLING_CA_FILE=str(tls_files["ca"]),
            VISIONTEL_PROMETHEUS_REMOTE_WRITE_URL=f"http://{stack.prometheus}/api/v1/write",
            VISIONTEL_PROMETHEUS_TOKEN="unused-by-this-prometheus",
            VISIONTEL_LOKI_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}/otlp",
        )
        gateway_port = gateway["VISIONTEL_GATEWAY_GRPC_ENDPOINT"].split(":")[1]
        agents = {
            name: _collector(
                VISIONTEL_OTLP_GRPC_ENDPOINT=f"127.0.0.1:{free_port()}",
                VISIONTEL_OTLP_HTTP_ENDPOINT=f"127.0.0.1:{free_port()}",
                VISIONTEL_GATEWAY_ENDPOINT=f"localhost:{gateway_port}",
                VISIONTEL_GATEWAY_TOKEN=TOKEN,
                VISIONTEL_GATEWAY_CA_FILE=str(tls_files["ca"]),
                VISIONTEL_AGENT_QUEUE_DIR=str(work / f"{name}-queue"),
                VISIONTEL_NODE_NAME=name,
            )
            for name in ("agent-a", "agent-b")
        }
        stack.start_otelcol("tailsampling", [CONFIG_DIR / "tailsampling.yaml"], tail)
        stack.start_otelcol("gateway", [CONFIG_DIR / "gateway.yaml"], gateway)
        for name, env in agents.items():
            stack.start_otelcol(name, [CONFIG_DIR / "agent.yaml"], env)
        yield stack, {"gateway": gateway, **agents}
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
    agents = [envs["agent-a"], envs["agent-b"]]
    sent = [tid for agent in agents for tid in _send(agent, "before", TRACES_PER_AGENT_AND_PHASE)]
    time.sleep(3)  # let the first batches through

    stack.stop_one("gateway")
    outage_started = time.monotonic()
    restarted = False
    while time.monotonic() - outage_started < OUTAGE_S:
        for agent in agents:
            sent += _send(agent, "during", 2)
        time.sleep(5)
        if not restarted and time.monotonic() - outage_started > OUTAGE_S / 2:
            # An agent restarted mid-outage keeps what it had queued: the queue is on
            # disk (file_storage), not in the process.
            stack.stop_one("agent-a")
            stack.start_otelcol("agent-a", [CONFIG_DIR / "agent.yaml"], envs["agent-a"])
            restarted = True
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
