"""The dashboard checker (dashboard_check.py) itself, without a Prometheus.

The end-to-end test (test_dashboards_on_data.py) runs it against a real Prometheus after
a demo run; these tests show it would notice what it is there for: a renamed metric makes
exactly the panels that select it report "no data", variables are filled in as Grafana
does, and a series of NaN is no data.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import pytest
from collector_support import CONFIG_DIR, load_yaml
from dashboard_check import Query, UnresolvedVariable, check, has_data, load_boards, queries
from dashboard_check import substitute as fill
from metric_catalog import prometheus_names
from promql_names import selected_names

DASHBOARDS = sorted((CONFIG_DIR / "grafana" / "dashboards").glob("*.json"))
RULES = CONFIG_DIR / "prometheus" / "rules" / "visiontel.rules.yaml"


def _known() -> set[str]:
    rules = load_yaml(RULES)
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    return prometheus_names() | recorded


def _stand_in(known: set[str]) -> Any:
    """A Prometheus that has every series named in `known`, and no other."""

    def evaluate(query: Query) -> list[dict[str, Any]]:
        return [{"value": [0, "1"]}] if selected_names(query.expr) <= known else []

    return evaluate


def _used_names() -> list[str]:
    return sorted(
        {name for query in load_boards(DASHBOARDS) for name in selected_names(query.expr)}
    )


def test_every_panel_and_variable_yields_queries_with_nothing_left_to_fill() -> None:
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        found = queries(board, path.name)
        titles = {q.panel for q in found}
        assert titles >= {panel["title"] for panel in board["panels"]}, path.name
        variables = {f"${v['name']}" for v in board["templating"]["list"]}
        assert variables <= titles, path.name
        for query in found:
            assert "$" not in query.expr and "[[" not in query.expr, query


def test_the_shipped_dashboards_pass_against_a_prometheus_with_every_known_series() -> None:
    assert check(load_boards(DASHBOARDS), _stand_in(_known())) == []


@pytest.mark.parametrize("name", _used_names())
def test_a_renamed_metric_fails_exactly_the_panels_that_select_it(
    name: str, tmp_path: pathlib.Path
) -> None:
    """The mutation check: the metric is renamed in a copy of every dashboard."""
    renamed = f"{name}_renamed"
    copies = []
    for path in DASHBOARDS:
        text = re.sub(rf"(?<![\w:]){re.escape(name)}(?![\w:])", renamed, path.read_text())
        copy = tmp_path / path.name
        copy.write_text(text)
        copies.append(copy)
    expected = {str(q) for q in load_boards(DASHBOARDS) if name in selected_names(q.expr)}
    assert expected
    reported = check(load_boards(copies), _stand_in(_known()))
    assert {line.split(": no data")[0] for line in reported} == expected
    assert all(renamed in line for line in reported)


def test_grafana_variables_are_filled_in_as_grafana_sends_them() -> None:
    variables = {"model": ".*", "stage": "inference"}
    expr = 'rate(x{m=~"$model",s="${stage}",t="[[stage]]"}[$__rate_interval]) * $__interval_ms'
    assert fill(expr, variables) == 'rate(x{m=~".*",s="inference",t="inference"}[1m]) * 15000'
    with pytest.raises(UnresolvedVariable, match=r"\$instance"):
        fill('x{instance=~"$instance"}', variables)


def test_variables_default_to_all_and_label_values_must_have_values() -> None:
    board = {
        "templating": {
            "list": [
                {
                    "name": "node",
                    "type": "query",
                    "query": {"query": "label_values(up{job='a'}, instance)"},
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                }
            ]
        },
        "panels": [
            {
                "title": "Up",
                "targets": [{"refId": "A", "expr": 'up{instance=~"$node"}', "instant": True}],
            },
            {"title": "Hidden", "targets": [{"refId": "A", "expr": "x", "hide": True}]},
        ],
    }
    variable, panel = queries(board, "b.json")
    assert variable.expr == "count by (instance) (up{instance!=\"\",job='a'})"
    assert panel == Query("b.json", "Up", "A", 'up{instance=~".*"}', instant=True)


def test_nan_only_series_are_no_data() -> None:
    assert not has_data([])
    assert not has_data([{"values": [[1, "NaN"], [2, "NaN"]]}])
    assert has_data([{"values": [[1, "NaN"], [2, "0"]]}])
    assert has_data([{"value": [1, "0"]}])
