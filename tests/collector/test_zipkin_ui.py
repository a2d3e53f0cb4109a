"""The stack's trace UI as a person sees it: Zipkin's Lens, rendered by headless Chromium.

The stack's collector and Zipkin (collector-config/stack/stack.py; the collector's traces
reach Zipkin through stack_zipkin's OTLP bridge) receive the multi-process e2e pipeline and
a `visiontel demo` run. Zipkin's API must hold the traces as sent (parents, services,
credentials stripped); Chromium (Debian's, `toolchain.py chromium`) must render one demo
frame's trace in Lens with the frame-source, detector and tracker spans in the page. The
screenshot is kept: its path is printed, and it is copied to $VISIONTEL_ARTIFACTS when set.
Run with `nox -s stack`.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from browser import chromium_path, rendered_dom, screenshot
from collector_support import ROOT, Stack
from e2e_pipeline import run_pipeline

pytestmark = pytest.mark.e2e
SERVICES = ("frame-source", "detector", "tracker")  # the demo's processes


@pytest.fixture(scope="module")
def stack(stack_binaries: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Only what the trace UI needs: Zipkin, then the collector that sends to it. Its other
    # exporters (Jaeger, the log store) retry from queues of their own, apart from Zipkin's;
    # test_stack_e2e.py runs the whole stack.
    running = Stack(tmp_path_factory.mktemp("zipkin-stack"))
    try:
        running.start_zipkin()
        running.start_collector()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_path()


@pytest.fixture(scope="module")
def demo_frame(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The trace id of one frame of a `visiontel demo` run sent to the stack's collector."""
    script = pathlib.Path(sys.executable).parent / "visiontel"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "visiontel.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VISIONTEL_DEMO_"))}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{stack.otlp_http}",
        VISIONTEL_DEMO_OUTPUT=str(tmp_path_factory.mktemp("demo")),
        PYTHONUNBUFFERED="1",
    )
    result = subprocess.run(
        [*command, "demo", "--frames", "6", "--fps", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout, result.stderr)
    trace_id = stack.frame_trace(SERVICES, timeout=60)
    assert trace_id, f"no trace with spans from {SERVICES} in Zipkin:\n{stack.log('otelcol')}"
    return trace_id


def _eventually_spans(stack: Stack, trace_id: str, services: set[str]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        spans = stack.zipkin_trace(trace_id)
        if {s["localEndpoint"]["serviceName"] for s in spans} >= services:
            return spans
        time.sleep(0.5)
    raise AssertionError(f"trace {trace_id} from {services} not in Zipkin")


def test_zipkin_api_has_the_pipeline_traces_as_sent(stack: Stack) -> None:
    trace_ids = run_pipeline(stack.otlp_grpc, 3)
    for trace_id in trace_ids:
        spans = _eventually_spans(stack, trace_id, {"e2e-decoder", "e2e-detector", "e2e-tracker"})
        by_name = {s["name"]: s for s in spans}
        assert {"decode", "detect", "track"} <= set(by_name)
        assert by_name["detect"]["parentId"] == by_name["decode"]["id"]
        assert all(s["traceId"] == trace_id for s in spans)
        assert all(s["duration"] > 0 and s["timestamp"] > 1.6e15 for s in spans)  # µs
        # local.yaml's privacy processors ran before the bridge saw anything.
        assert by_name["decode"]["tags"]["visiontel.camera.url"] == "rtsp://10.9.8.7:554/live"
        assert "Cam3raPa55" not in str(spans)


def test_lens_renders_a_demo_frame_with_its_three_services(
    stack: Stack, demo_frame: str, chromium: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    spans = _eventually_spans(stack, demo_frame, set(SERVICES))
    url = stack.lens_url(demo_frame)
    # Lens is a single-page app: the trace is in the DOM only once its scripts have fetched
    # /zipkin/api/v2/trace/<id> and rendered; the virtual-time budget lets them run.
    dom = rendered_dom(chromium, url, *SERVICES)
    missing = [service for service in SERVICES if service not in dom]
    assert not missing, f"{url}: services {missing} not in the rendered page:\n{dom[-3000:]}"
    # Every span of the trace is a row of the rendered waterfall, by its name.
    names = {s["name"] for s in spans}
    absent = sorted(name for name in names if name not in dom)
    assert not absent, f"{url}: span names {absent} not in the rendered page"
    assert demo_frame in dom
    screenshot(chromium, url, tmp_path_factory.mktemp("lens") / "lens-demo-frame.png")
