"""Every address `visiontel demo --stack` prints, opened in headless Chromium as a person
would open it after a run: each page renders, and shows that run's data.

The stack (collector-config/stack/stack.py: collector, Zipkin, Jaeger, Prometheus,
VictoriaLogs) receives a short `visiontel demo` run; the lines are those the demo prints
(`visiontel.demo._stack.describe`, read from the started stack). Screenshots are kept as
artifacts. Run with `nox -s stack`.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator

import pytest
from browser import chromium_path, rendered_dom, screenshot
from collector_support import ROOT, Stack, eventually

pytestmark = pytest.mark.e2e
SERVICES = ("frame-source", "detector", "tracker")
LINE = re.compile(r"\s*(\S.*?\S)\s{2,}(http://\S+)")


@pytest.fixture(scope="module")
def stack(stack_binaries: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("stack-pages"))
    try:
        running.start()
    except BaseException:
        running.stop()
        raise
    yield running
    running.stop()


@pytest.fixture(scope="module")
def printed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """label -> address, as `demo --stack` prints them after a run into this stack."""
    out = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VISIONTEL_DEMO_"))}
    command = [
        *(sys.executable, "-m", "visiontel.cli", "demo", "--frames", "8", "--fps", "0"),
        *("--otlp-endpoint", f"http://{stack.otlp_http}", "--output", str(out)),
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    # The demo's tracker logs reach VictoriaLogs through the collector's batch: wait for
    # them, so that the page of "its logs" is looked at once there is something to show.
    eventually(
        lambda: stack.victorialogs.query('"service.name":="tracker"') or None,
        "tracker log records in VictoriaLogs",
    )
    # visiontel is installed by the stack session only (the collector session collects
    # this module without it).
    from visiontel.demo._stack import describe

    lines = describe(stack)
    found = {m.group(1): m.group(2) for m in map(LINE.match, lines) if m}
    assert {"Zipkin UI", "a frame", "Prometheus", "Logs UI", "its logs"} <= set(found), lines
    return found


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_path()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("pages")


def test_the_frame_page_shows_its_trace_across_the_three_services(
    printed: dict[str, str], chromium: str, shots: pathlib.Path
) -> None:
    url = printed["a frame"]
    trace_id = url.rsplit("/", 1)[1]
    dom = rendered_dom(chromium, url, *SERVICES)
    assert all(service in dom for service in SERVICES), dom[-2000:]
    assert trace_id in dom
    assert {"detect", "track"} <= set(re.findall(r"\b(detect|track)\b", dom))
    screenshot(chromium, url, shots / "zipkin-frame.png")


def test_the_zipkin_ui_address_serves_lens(printed: dict[str, str], chromium: str) -> None:
    dom = rendered_dom(chromium, printed["Zipkin UI"], "Run Query")
    assert "Run Query" in dom and "Error" not in dom.split("<body", 1)[-1][:2000], dom[-2000:]


def test_the_prometheus_address_serves_a_working_query_page(
    stack: Stack, printed: dict[str, str], chromium: str, shots: pathlib.Path
) -> None:
    root = printed["Prometheus"]
    dom = rendered_dom(chromium, root, 'id="graph_container"')
    # Debian's Prometheus answers "Error reading base template" when its web assets are
    # not where it looks (stack.py points it at those toolchain.py unpacks).
    assert "Error reading" not in dom and 'id="graph_container"' in dom, dom[-2000:]
    # A query typed into that page (the address keeps it): the run's frame latency series,
    # in the table view, rendered by the page's scripts from the query API.
    expr = "sum by (job) (visiontel_frame_latency_seconds_count)"
    series = eventually(lambda: stack.promql(expr), f"{expr} in Prometheus")  # 1 s scrapes
    jobs = sorted(s["metric"]["job"] for s in series)
    assert any("tracker" in job for job in jobs), series  # the sink records frame latency
    query = urllib.parse.urlencode({"g0.expr": expr, "g0.tab": "1"}, quote_via=urllib.parse.quote)
    url = f"{root.rstrip('/')}/classic/graph?{query}"
    rows = [f'{{job="{job}"}}' for job in jobs]
    dom = rendered_dom(chromium, url, *rows)
    assert all(row in dom for row in rows), (rows, dom[-3000:])
    screenshot(chromium, url, shots / "prometheus-frame-latency.png")


def test_the_logs_addresses_serve_vmui_and_the_frame_logs(
    stack: Stack, printed: dict[str, str], chromium: str, shots: pathlib.Path
) -> None:
    dom = rendered_dom(chromium, printed["Logs UI"], "VictoriaLogs")
    assert "VictoriaLogs" in dom, dom[-2000:]
    url = printed["its logs"]
    trace_id = printed["a frame"].rsplit("/", 1)[1]
    (record,) = stack.victorialogs.query(f'trace_id:="{trace_id}"')
    assert record["service.name"] == "tracker"
    dom = rendered_dom(chromium, url, record["_msg"])
    assert record["_msg"] in dom, dom[-3000:]
    screenshot(chromium, url, shots / "victorialogs-frame.png")
