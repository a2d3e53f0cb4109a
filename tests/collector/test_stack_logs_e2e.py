"""End to end, logs: `visiontel demo` -> otelcol-visiontel (local.yaml with the shipped
logs-victorialogs.yaml overlay) -> VictoriaLogs, read back with LogsQL by trace id.

The demo's tracker writes one log record per frame inside the frame's `track` span
("frame N: D detections, A active tracks (K new)"), so each record carries that frame's
trace and span ids. Jaeger, fed by the same collector, says which trace is which frame's.
Also: VictoriaLogs' port taken by another process (started again on a fresh one), and the
web UI address the stack prints. Run with `nox -s stack`.
"""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from collector_support import Stack, eventually, pick_port, stack_module

pytestmark = pytest.mark.e2e
FRAMES = 6
FRAME_LINE = re.compile(r"frame (\d+): (\d+) detections, (\d+) active tracks \((\d+) new\)")
quote = stack_module.stack_victorialogs.quote


@pytest.fixture(scope="module")
def stack(stack_binaries: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Only what this test reads: the log store, Jaeger (which frame a trace is) and the
    # collector between them; test_stack_e2e.py runs the whole stack.
    running = Stack(tmp_path_factory.mktemp("stack-logs"))
    try:
        running.start_victorialogs()
        running.start_jaeger()
        running.start_collector()
    except BaseException:
        running.stop()
        raise
    yield running
    running.stop()


@pytest.fixture(scope="module")
def run_id(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Runs the demo into the stack's collector (OTLP/HTTP); returns the run's id."""
    out = tmp_path_factory.mktemp("demo")
    # Nothing from the caller's environment may point the demo elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VISIONTEL_DEMO_"))}
    command = [
        *(sys.executable, "-m", "visiontel.cli", "demo", "--frames", str(FRAMES), "--fps", "0"),
        *("--otlp-endpoint", f"http://{stack.otlp_http}", "--output", str(out)),
    ]
    result = subprocess.run(
        command, cwd=out, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    found = re.search(r"visiontel\.demo\.run_id=([\w-]+)\.", result.stdout)
    assert found, result.stdout
    return found.group(1)


def _sequence(message: str) -> int:
    """N of the tracker's "frame N: ..." line."""
    matched = FRAME_LINE.fullmatch(message)
    assert matched, message
    return int(matched.group(1))


def _frame_records(stack: Stack, run_id: str) -> list[dict[str, Any]] | None:
    query = f'"service.name":="tracker" "visiontel.demo.run_id":={quote(run_id)}'
    found = [r for r in stack.victorialogs.query(query) if FRAME_LINE.fullmatch(r["_msg"])]
    return found if len(found) >= FRAMES else None


def _jaeger_spans(
    stack: Stack, trace_id: str, span_id: str
) -> dict[str, tuple[str, str, Any]] | None:
    """span id -> (service, operation, visiontel.frame.sequence) of a trace, once it holds
    spans of all three demo services and the span `span_id` (services export separately)."""
    trace = stack.jaeger_trace(trace_id)
    services = {k: p["serviceName"] for k, p in trace.get("processes", {}).items()}
    if set(services.values()) < {"frame-source", "detector", "tracker"}:
        return None
    spans = {}
    for span in trace["spans"]:
        tags = {t["key"]: t["value"] for t in span["tags"]}
        spans[span["spanID"]] = (
            services[span["processID"]],
            span["operationName"],
            tags.get("visiontel.frame.sequence"),
        )
    return spans if span_id in spans else None


def test_tracker_logs_each_frame_once_with_its_own_trace(stack: Stack, run_id: str) -> None:
    records = eventually(
        lambda: _frame_records(stack, run_id), f"{FRAMES} tracker frame records in VictoriaLogs"
    )
    sequences = sorted(_sequence(r["_msg"]) for r in records)
    assert sequences == list(range(FRAMES))
    trace_ids = [r["trace_id"] for r in records]
    assert len(set(trace_ids)) == FRAMES  # a trace per frame
    assert all(re.fullmatch(r"[0-9a-f]{32}", t) for t in trace_ids), trace_ids
    for record in records:
        assert record["service.namespace"] == "visiontel-demo"
        assert record["severity_text"] == "INFO"
        assert record["code.function.name"] == "result"  # the tracker's gRPC handler
        assert 'service.name="tracker"' in record["_stream"]


def test_a_frame_trace_id_finds_the_tracker_record_of_that_frame(stack: Stack, run_id: str) -> None:
    records = eventually(
        lambda: _frame_records(stack, run_id), f"{FRAMES} tracker frame records in VictoriaLogs"
    )
    for record in records:
        trace_id = record["trace_id"]
        # By trace id, as a person coming from a trace would search.
        by_trace = stack.victorialogs.query(f"trace_id:={quote(trace_id)}")
        assert [r["_msg"] for r in by_trace] == [record["_msg"]], by_trace
        (found,) = by_trace
        assert found["service.name"] == "tracker"
        assert found["span_id"] == record["span_id"]
        sequence = _sequence(found["_msg"])
        # The record's span is that frame's `track` span in the trace Jaeger holds.
        span_id = found["span_id"]
        spans = eventually(
            lambda: _jaeger_spans(stack, trace_id, span_id), f"span {span_id} in Jaeger"
        )
        assert spans[span_id] == ("tracker", "track", sequence), spans


def test_the_logs_ui_the_stack_prints_is_served(stack: Stack) -> None:
    # VictoriaLogs embeds its web UI (vmui); `stack.py up` and `demo --stack` print this URL.
    with urllib.request.urlopen(stack.victorialogs.ui_url, timeout=10) as response:
        assert response.status == 200
        assert "Explore your log data with VictoriaLogs UI" in response.read().decode()


def test_a_taken_port_starts_victorialogs_again_on_a_fresh_one(
    stack_binaries: None, tmp_path: pathlib.Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", pick_port()))
        sock.listen()
        taken = f"127.0.0.1:{sock.getsockname()[1]}"
        own = Stack(tmp_path)
        own.victorialogs.address = taken
        try:
            own.start_victorialogs()
            assert own.victorialogs.address != taken
            # It is this VictoriaLogs that answers there: a query finds its empty store.
            assert own.victorialogs.query("*") == []
        finally:
            own.stop()
