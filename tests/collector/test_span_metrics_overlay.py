"""collector-config/span-metrics.yaml, the overlay that gives local.yaml the RED metrics
of gateway.yaml: accepted by the built collector over local.yaml (alone and under the
other overlay the stack applies), with gateway.yaml's connector settings, and its metrics
really reach local.yaml's Prometheus exporter. The dashboards' end-to-end check
(test_dashboards_on_data.py) reads them through the whole stack."""

from __future__ import annotations

import os
import pathlib
import subprocess
import time
import urllib.request
from typing import Any

import pytest
from collector_support import CONFIG_DIR, collector_env, dummy_env, load_yaml, pick_port
from otlp_json import post, span, traces

OVERLAY = CONFIG_DIR / "span-metrics.yaml"
LOCAL = CONFIG_DIR / "local.yaml"


def test_connector_settings_are_gateway_yamls() -> None:
    overlay = load_yaml(OVERLAY)["connectors"]["span_metrics"]
    assert overlay == load_yaml(CONFIG_DIR / "gateway.yaml")["connectors"]["span_metrics"]


def test_overlay_keeps_local_yamls_trace_exporters() -> None:
    """Lists replace lists when configs merge: the overlay restates local.yaml's traces
    exporters, so a new one there must be added here too."""
    local = load_yaml(LOCAL)["service"]["pipelines"]["traces"]["exporters"]
    overlay = load_yaml(OVERLAY)["service"]["pipelines"]["traces"]["exporters"]
    assert overlay == [*local, "span_metrics"]


@pytest.mark.parametrize(
    "extra", [[], [CONFIG_DIR / "logs-victorialogs.yaml"]], ids=["alone", "with-logs-overlay"]
)
def test_overlay_passes_validate_over_local_yaml(
    otelcol: pathlib.Path, extra: list[pathlib.Path], tls_files: dict[str, pathlib.Path]
) -> None:
    args = [str(otelcol), "validate", "--config", str(LOCAL)]
    for path in (*extra, OVERLAY):
        args += ["--config", str(path)]
    base = {k: v for k, v in os.environ.items() if not k.startswith("VISIONTEL_")}
    result = subprocess.run(
        args,
        env={**base, **dummy_env(LOCAL, tls_files)},
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


def test_span_metrics_reach_the_prometheus_exporter(start_collector: Any) -> None:
    """Spans in, traces_span_metrics_* out of local.yaml's Prometheus exporter, labelled
    by service, span name and status (the dashboards' RED panels and error ratio)."""
    env = collector_env(VISIONTEL_PROMETHEUS_EXPORTER_ENDPOINT=f"127.0.0.1:{pick_port()}")
    start_collector([LOCAL, OVERLAY], env)
    trace_id = "5b8efff798038103d269b633813fc60c"
    payload = traces(
        {"service.name": "overlay-check"},
        [
            span(trace_id, "eee19b7ec3c1b174", "detect", {"visiontel.stage": "inference"}),
            span(trace_id, "eee19b7ec3c1b175", "detect", {}, error=True),
        ],
    )
    post(env["VISIONTEL_OTLP_HTTP_ENDPOINT"], "traces", payload)
    url = f"http://{env['VISIONTEL_PROMETHEUS_EXPORTER_ENDPOINT']}/metrics"
    deadline, calls = time.monotonic() + 90, []
    while time.monotonic() < deadline:  # the connector flushes every 15 s
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        calls = [
            line
            for line in text.splitlines()
            if line.startswith("traces_span_metrics_calls_total{")
        ]
        if len(calls) >= 2:
            break
        time.sleep(0.5)
    assert len(calls) == 2, calls
    assert all('job="overlay-check"' in c and 'span_name="detect"' in c for c in calls), calls
    assert sorted('status_code="STATUS_CODE_ERROR"' in c for c in calls) == [False, True]
