"""Grafana provisioning: datasources link to each other, dashboards query real series."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest
from collector_support import CONFIG_DIR, load_yaml
from metric_catalog import prometheus_names
from promql_names import selected_names

GRAFANA = CONFIG_DIR / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULES = CONFIG_DIR / "prometheus" / "rules" / "visiontel.rules.yaml"
# What Grafana substitutes before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "1h"}


def _datasources() -> dict[str, dict[str, Any]]:
    doc = load_yaml(GRAFANA / "provisioning" / "datasources" / "visiontel.yaml")
    return {source["uid"]: source for source in doc["datasources"]}


def _panels() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, panel)
        for path in DASHBOARDS
        for panel in json.loads(path.read_text())["panels"]
    ]


def _expressions() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            out += [(f"{path.name}: {panel['title']}", t["expr"]) for t in panel["targets"]]
        for var in board["templating"]["list"]:
            match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", var["query"]["query"])
            assert match, var["query"]
            out.append((f"{path.name}: ${var['name']}", match.group(1)))
    return out


def _substitute(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def test_dashboards_are_generated_from_generate_py() -> None:
    result = subprocess.run(
        [sys.executable, str(GRAFANA / "generate.py"), "--check"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_the_four_dashboards_exist() -> None:
    titles = {json.loads(p.read_text())["title"] for p in DASHBOARDS}
    assert titles == {
        "visiontel / GPU fleet",
        "visiontel / inference stages",
        "visiontel / pipeline frame latency",
        "visiontel / canary vs stable",
    }
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


def test_datasources_link_traces_logs_and_exemplars() -> None:
    sources = _datasources()
    by_type = {source["type"]: source for source in sources.values()}
    assert set(by_type) == {"prometheus", "loki", "jaeger"}
    exemplar = by_type["prometheus"]["jsonData"]["exemplarTraceIdDestinations"][0]
    assert sources[exemplar["datasourceUid"]]["type"] == "jaeger"
    derived = by_type["loki"]["jsonData"]["derivedFields"][0]
    assert sources[derived["datasourceUid"]]["type"] == "jaeger"
    assert derived["matcherRegex"] == "trace_id"
    to_logs = by_type["jaeger"]["jsonData"]["tracesToLogsV2"]
    assert sources[to_logs["datasourceUid"]]["type"] == "loki"
    # Grafana expands $NAME in provisioning files: Grafana's own ${__...} must be escaped.
    text = (GRAFANA / "provisioning" / "datasources" / "visiontel.yaml").read_text()
    assert not re.search(r"(?<!\$)\$\{__", text)


def test_every_panel_queries_the_provisioned_prometheus() -> None:
    uids = set(_datasources())
    for board, panel in _panels():
        assert panel["datasource"]["uid"] in uids, (board, panel["title"])
        assert panel["targets"], (board, panel["title"])
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "visiontel-prometheus"


def test_latency_heatmaps_use_bucket_series_with_exemplars() -> None:
    heatmaps = [(b, p) for b, p in _panels() if p["type"] == "heatmap"]
    assert {b for b, _ in heatmaps} == {"inference-stages.json", "frame-latency.json"}
    for _, panel in heatmaps:
        target = panel["targets"][0]
        assert target["format"] == "heatmap" and target["exemplar"] is True
        assert "_bucket" in target["expr"] and "sum by (le)" in target["expr"]


def test_dashboards_select_only_known_series() -> None:
    rules = load_yaml(RULES)
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    known = prometheus_names() | recorded
    for where, expr in _expressions():
        unknown = selected_names(_substitute(expr)) - known
        assert not unknown, f"{where}: {unknown}"


def test_every_dashboard_expression_parses(promtool: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """promtool parses each expression as the body of a recording rule."""
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": _substitute(expr)}
        for i, (_, expr) in enumerate(_expressions())
    ]
    path = tmp_path / "dashboard-exprs.yaml"
    path.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [str(promtool), "check", "rules", str(path)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


@pytest.mark.parametrize("broken", ["sum by (le (rate(x[1m]))", "rate(x[1m]"])
def test_expression_check_rejects_broken_promql(
    promtool: pathlib.Path, tmp_path: pathlib.Path, broken: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        json.dumps(
            {"groups": [{"name": "g", "rules": [{"record": "dashboard:broken", "expr": broken}]}]}
        )
    )
    result = subprocess.run(
        [str(promtool), "check", "rules", str(path)], check=False, capture_output=True, text=True
    )
    assert result.returncode != 0
