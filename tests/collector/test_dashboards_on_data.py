"""End to end: after a `visiontel demo` run into the real stack, every query of every panel
of every dashboard returns data from the real Prometheus.

The demo runs with a stable and a canary model version (the canary dashboard compares
them) and with the NVML simulator of visiontel-gpu as its GPU (the GPU fleet dashboard);
the simulated GPU is the healthy one of NvmlSimulator.gpu() plus one process on it, as the
demo's own process would be on a real GPU. Queries are evaluated as Grafana's panels send
them (dashboard_check.py): range queries over the run, variables at "All".

The stack runs local.yaml with the shipped overlays (span-metrics.yaml gives the
frame-latency dashboard's RED panels their spanmetrics). Run with `nox -s stack`.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from collector_support import CONFIG_DIR, Stack
from dashboard_check import PrometheusRange, Query, check, has_data, load_boards

pytestmark = pytest.mark.e2e
DASHBOARDS = sorted((CONFIG_DIR / "grafana" / "dashboards").glob("*.json"))
# Recording rules are evaluated every 30 s, the daily-history group every minute (after
# the 5-minute mean it reads exists): a query may need that long after the run to fill.
SETTLE_S = 180.0


def _visiontel() -> list[str]:
    script = pathlib.Path(sys.executable).parent / "visiontel"
    return [str(script)] if script.exists() else [sys.executable, "-m", "visiontel.cli"]


@dataclass
class Run:
    stack: Stack
    prometheus: PrometheusRange
    queries: list[Query]
    empty: list[str]  # queries still without data when the run had settled


@pytest.fixture(scope="module")
def run(stack_binaries: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("needs cc: no C compiler (cc or gcc) to build the NVML simulator; install one")
    from visiontel.gpu.testing import NvmlSimulator

    work = tmp_path_factory.mktemp("dashboards")
    sim = NvmlSimulator.build(work / "nvml")
    sim.write({"device_count": 1, **sim.gpu(0), "gpu.0.process.0": f"4242,{2 * 1024**3},0,0"})
    stack = Stack(work).start()
    try:
        started = time.time()
        env = {
            k: v
            for k, v in os.environ.items()
            if not (k.startswith("OTEL_") or k.startswith("VISIONTEL_DEMO_"))
        }
        result = subprocess.run(
            [*_visiontel(), "demo", "--frames", "200", "--fps", "10",
             "--canary-version", "1.1", "--canary-fraction", "0.3",
             "--otlp-endpoint", f"http://{stack.otlp_http}", "--output", str(work / "out")],
            env={**env, **sim.env(), "PYTHONUNBUFFERED": "1"},
            cwd=work, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert "no GPU found" not in result.stdout, result.stdout
        prometheus = PrometheusRange(stack.prometheus, start=started)
        all_queries = load_boards(DASHBOARDS)
        waiting = list(all_queries)
        deadline = time.monotonic() + SETTLE_S
        while waiting and time.monotonic() < deadline:
            waiting = [q for q in waiting if not has_data(prometheus(q))]
            if waiting:
                time.sleep(5)
        yield Run(stack, prometheus, all_queries, check(waiting, prometheus))
    finally:
        stack.stop()


def test_every_panel_of_every_dashboard_shows_data(run: Run) -> None:
    boards = [(p.name, json.loads(p.read_text())) for p in DASHBOARDS]
    panels = {(name, panel["title"]) for name, board in boards for panel in board["panels"]}
    assert {(q.board, q.panel) for q in run.queries if not q.panel.startswith("$")} == panels
    targets = sum(len(panel["targets"]) for _, board in boards for panel in board["panels"])
    variables = sum(len(board["templating"]["list"]) for _, board in boards)
    assert len(run.queries) == targets + variables
    assert run.empty == [], f"{len(run.empty)} of {len(run.queries)} queries empty:\n" + "\n".join(
        run.empty
    )


def test_a_renamed_metric_is_reported_by_the_real_prometheus(
    run: Run, tmp_path: pathlib.Path
) -> None:
    """The same mutation as the unit test, against the data of the run."""
    board = CONFIG_DIR / "grafana" / "dashboards" / "gpu-fleet.json"
    copy = tmp_path / board.name
    copy.write_text(board.read_text().replace("hw_power_watts", "hw_power_watt"))
    reported = check(load_boards([copy]), run.prometheus)
    assert [line.split(": no data")[0] for line in reported] == ["gpu-fleet.json: Power [A]"]


def test_latency_panels_carry_exemplars_of_traces_in_jaeger(run: Run) -> None:
    """Exemplars are what the exemplar -> trace link of the Prometheus datasource opens."""
    with_exemplars = [q for q in run.queries if q.exemplar]
    assert len(with_exemplars) >= 6
    missing = []
    for query in with_exemplars:
        exemplars: list[dict[str, Any]] = run.prometheus.exemplars(query)
        trace_ids = {e["labels"].get("trace_id") for e in exemplars} - {None}
        if not trace_ids:
            missing.append(str(query))
            continue
        trace = run.stack.jaeger_trace(sorted(trace_ids)[0])
        assert trace.get("spans"), (query, trace)
    assert missing == [], missing
