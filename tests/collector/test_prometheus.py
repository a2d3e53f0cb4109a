"""Prometheus side: rules pass promtool, every rule has a test, every name is real."""

from __future__ import annotations

import pathlib
import subprocess
import time
import urllib.request
from typing import Any

from collector_support import CONFIG_DIR, collector_env, load_yaml, pick_port
from metric_catalog import CATALOG, prometheus_names
from otlp_json import gauge_metric, histogram_metric, metrics, post, sum_metric
from promql_names import selected_names

PROMETHEUS_DIR = CONFIG_DIR / "prometheus"
RULES = PROMETHEUS_DIR / "rules" / "visiontel.rules.yaml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "visiontel.test.yaml"


def _promtool(promtool: pathlib.Path, *args: str) -> str:
    result = subprocess.run(
        [str(promtool), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PROMETHEUS_DIR,
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_rules_pass_promtool_check(promtool: pathlib.Path) -> None:
    out = _promtool(promtool, "check", "rules", str(RULES))
    assert "SUCCESS" in out


def test_prometheus_config_passes_promtool_check(promtool: pathlib.Path) -> None:
    out = _promtool(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yaml"))
    assert "SUCCESS: 1 rule files found" in out


def test_rule_unit_tests_pass(promtool: pathlib.Path) -> None:
    out = _promtool(promtool, "test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in out


def test_promtool_test_catches_a_wrong_expectation(
    promtool: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """The unit tests can fail: the same file with a threshold changed is rejected."""
    rules = tmp_path / "rules" / "visiontel.rules.yaml"
    rules.parent.mkdir()
    rules.write_text(RULES.read_text().replace("used_ratio > 0.9", "used_ratio > 0.96"))
    tests = tmp_path / "tests" / "visiontel.test.yaml"
    tests.parent.mkdir()
    tests.write_text(RULE_TESTS.read_text())
    result = subprocess.run(
        [str(promtool), "test", "rules", str(tests)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "VisiontelGPUMemoryHigh" in result.stdout + result.stderr


def _rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def test_every_rule_has_a_promtool_case() -> None:
    cases = load_yaml(RULE_TESTS)["tests"]
    fired = {
        test["alertname"]
        for case in cases
        for test in case.get("alert_rule_test", [])
        if test["exp_alerts"]
    }
    tested_exprs = " ".join(
        test["expr"] for case in cases for test in case.get("promql_expr_test", [])
    )
    alerts = [rule for rule in _rules() if "alert" in rule]
    records = [rule for rule in _rules() if "record" in rule]
    assert {
        "VisiontelGPUMemoryHigh",
        "VisiontelGPUThrottled",
        "VisiontelGPUTemperatureHigh",
        "VisiontelCanaryLatencyRegression",
        "VisiontelDetectionsDrift",
        "VisiontelErrorRateHigh",
    } <= {rule["alert"] for rule in alerts}
    for rule in alerts:
        assert rule["alert"] in fired, f"{rule['alert']} never shown to fire"
    alert_exprs = (
        " ".join(rule["expr"] for rule in alerts) + " " + " ".join(rule["expr"] for rule in records)
    )
    for rule in records:
        # Tested directly, or through an alert (all alerts are tested) that selects it.
        assert rule["record"] in tested_exprs or rule["record"] in selected_names(alert_exprs), (
            rule["record"]
        )


def test_rules_select_only_known_metrics() -> None:
    known = prometheus_names() | {rule["record"] for rule in _rules() if "record" in rule}
    for rule in _rules():
        unknown = selected_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {unknown}"


def _otlp(metric: Any, attributes: dict[str, str]) -> dict[str, Any]:
    if metric.kind == "histogram":
        return histogram_metric(metric.otel, metric.unit, [0.02, 0.3], [0.05, 0.1, 0.5], attributes)
    if metric.kind == "gauge":
        return gauge_metric(metric.otel, metric.unit, 0.5, attributes)
    return sum_metric(metric.otel, metric.unit, 7, attributes, monotonic=metric.kind == "counter")


def _scrape(url: str, expected: set[str], timeout: float = 20.0) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    series: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        series = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name = line.split("{", 1)[0].split(" ", 1)[0]
                series.setdefault(name, []).append(line)
        if expected <= series.keys():
            break
        time.sleep(0.5)
    return series


def test_catalog_names_are_what_the_collector_exposes(
    start_collector: Any, tmp_path: pathlib.Path
) -> None:
    """Send every catalogued metric through local.yaml; read names back from /metrics."""
    env = collector_env(VISIONTEL_PROMETHEUS_EXPORTER_ENDPOINT=f"127.0.0.1:{pick_port()}")
    start_collector([CONFIG_DIR / "local.yaml"], env)
    exporter = env["VISIONTEL_PROMETHEUS_EXPORTER_ENDPOINT"]  # as started: see start_collector
    resource = {
        "service.name": "detector",
        "service.instance.id": "node-a-1",
        "host.name": "node-a",
    }
    post(
        env["VISIONTEL_OTLP_HTTP_ENDPOINT"],
        "metrics",
        metrics(resource, [_otlp(metric, attributes) for metric, attributes in CATALOG.items()]),
    )

    expected = prometheus_names()
    series = _scrape(f"http://{exporter}/metrics", expected)
    missing = expected - series.keys()
    visiontel_like = sorted(
        n for n in series if n.startswith(("visiontel", "hw_", "nvidia", "traces_"))
    )
    assert not missing, f"not exposed: {sorted(missing)}; exposed: {visiontel_like}"

    duration = series["visiontel_inference_duration_seconds_bucket"][0]
    for label in (
        'visiontel_model_name="yolo"',
        'visiontel_model_version="v1"',
        'visiontel_stage="inference"',
        'job="detector"',
        'instance="node-a-1"',
        'host_name="node-a"',
    ):
        assert label in duration, duration
    memory = series["hw_gpu_memory_usage_bytes"][0]
    assert 'hw_id="GPU-0"' in memory and 'hw_name="NVIDIA A100"' in memory, memory
