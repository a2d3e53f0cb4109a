"""Run every query of the Grafana dashboards the way Grafana would, and report the empty ones.

Each target of each panel, and each `label_values(...)` variable, becomes a Query: its
PromQL with Grafana's variables replaced the way Grafana replaces them when the dashboard
opens with its defaults ("All" sends the variable's allValue, `.*`; `$__rate_interval` is
1m for our datasource, which leaves the scrape interval at Grafana's 15 s default).
check() evaluates each through a callable and names every query that gives no data —
what a user would see as "No data" in that panel. A series whose points are all NaN counts
as no data: Grafana draws nothing for it either.

The callable is a real Prometheus in the end-to-end test (PrometheusRange) and a stand-in
in the unit tests, which rename a metric and expect exactly its panels to be reported.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# Longest first: `$__interval_ms` must not be read as `$__interval` + "_ms".
BUILTINS = {
    "$__rate_interval": "1m",
    "$__interval_ms": "15000",
    "$__interval": "15s",
    "$__range_s": "3600",
    "$__range": "1h",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)")


@dataclass(frozen=True)
class Query:
    board: str  # file name
    panel: str  # panel title, or $name for a variable
    ref: str
    expr: str  # as Prometheus receives it
    instant: bool = False
    exemplar: bool = False

    def __str__(self) -> str:
        return f"{self.board}: {self.panel} [{self.ref}]"


class UnresolvedVariable(ValueError):
    pass


def _variable_values(board: dict[str, Any]) -> dict[str, str]:
    values = {}
    for variable in board.get("templating", {}).get("list", []):
        current = variable.get("current", {}).get("value", "$__all")
        if current in ("$__all", ["$__all"]):
            values[variable["name"]] = variable.get("allValue") or ".*"
        else:
            chosen = current if isinstance(current, list) else [current]
            values[variable["name"]] = "|".join(chosen)
    return values


def substitute(expr: str, variables: dict[str, str]) -> str:
    """expr with Grafana's built-ins and the dashboard's variables filled in."""
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)

    def one(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in variables:
            raise UnresolvedVariable(f"${name} is neither a Grafana built-in nor a variable")
        return variables[name]

    return _VARIABLE.sub(one, expr)


def _panels(panels: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # the panels of a (collapsed) row


def _label_values_query(board_name: str, variable: dict[str, Any]) -> Query:
    raw = variable["query"]
    text = raw["query"] if isinstance(raw, dict) else raw
    match = _LABEL_VALUES.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{board_name}: ${variable['name']}: not label_values(...): {text}")
    selector, label = match.groups()
    # label_values lists only non-empty values: a series without the label offers none.
    if "{" in selector:
        selector = selector.replace("{", f'{{{label}!="",', 1)
    else:
        selector = f'{selector}{{{label}!=""}}'
    return Query(board_name, f"${variable['name']}", "values", f"count by ({label}) ({selector})")


def queries(board: dict[str, Any], board_name: str) -> list[Query]:
    """Every query the dashboard sends when opened with its defaults, variables first."""
    variables = _variable_values(board)
    found = [
        _label_values_query(board_name, variable)
        for variable in board.get("templating", {}).get("list", [])
        if variable.get("type") == "query"
    ]
    for panel in _panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("hide"):
                continue
            found.append(
                Query(
                    board_name,
                    panel["title"],
                    target["refId"],
                    substitute(target["expr"], variables),
                    instant=bool(target.get("instant")) and not target.get("range"),
                    exemplar=bool(target.get("exemplar")),
                )
            )
    return found


def has_data(result: list[dict[str, Any]]) -> bool:
    """A vector or matrix result with at least one point that is a number (not NaN)."""
    for series in result:
        points = series.get("values") or ([series["value"]] if "value" in series else [])
        if any(not math.isnan(float(value)) for _, value in points):
            return True
    return False


Evaluate = Callable[[Query], list[dict[str, Any]]]


def check(all_queries: Iterable[Query], evaluate: Evaluate) -> list[str]:
    """One line per query that gives no data (empty, or NaN only)."""
    return [
        f"{query}: no data from {query.expr}"
        for query in all_queries
        if not has_data(evaluate(query))
    ]


def load_boards(paths: Iterable[Any]) -> list[Query]:
    out: list[Query] = []
    for path in paths:
        out += queries(json.loads(path.read_text()), path.name)
    return out


class PrometheusRange:
    """Evaluates a Query as Grafana's panel would: a range query over [start, end] (an
    instant one at `end` for an instant target). `end` None means now, each call."""

    def __init__(self, address: str, start: float, step: float = 5.0) -> None:
        self.base = f"http://{address}/api/v1"
        self.start = start
        self.step = step

    def _get(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.base}/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def __call__(self, query: Query) -> list[dict[str, Any]]:
        end = time.time()
        if query.instant:
            data = self._get("query", {"query": query.expr, "time": f"{end:.3f}"})
        else:
            data = self._get(
                "query_range",
                {
                    "query": query.expr,
                    "start": f"{self.start:.3f}",
                    "end": f"{end:.3f}",
                    "step": f"{self.step}",
                },
            )
        return list(data["result"])

    def exemplars(self, query: Query) -> list[dict[str, Any]]:
        """The exemplars Grafana would draw on the panel (each a link to its trace)."""
        data = self._get(
            "query_exemplars",
            {"query": query.expr, "start": f"{self.start:.3f}", "end": f"{time.time():.3f}"},
        )
        return [exemplar for series in data for exemplar in series.get("exemplars", [])]
