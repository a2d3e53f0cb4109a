"""How every visiontel panel is built, on grafana-foundation-sdk (Grafana's typed builders).

generate.py says *what* each dashboard shows; this module says *how* a panel of each kind
looks, so all of them share one datasource reference, one legend, one variable style.
The SDK writes the dashboard model of the Grafana release it was generated for (11.6:
schemaVersion 41), so the JSON is what Grafana itself would save, not our guess at it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import heatmap as heatmap_builder
from grafana_foundation_sdk.builders import prometheus as prometheus_builder
from grafana_foundation_sdk.builders import stat as stat_builder
from grafana_foundation_sdk.builders import timeseries as timeseries_builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, dashboard, heatmap, prometheus

# The uid provisioning/datasources/visiontel.yaml gives Prometheus; that datasource's
# exemplarTraceIdDestinations turns each exemplar's trace_id into a link to the trace
# view, so a panel only has to ask for exemplars (exemplar=True on its query).
PROMETHEUS = dashboard.DataSourceRef(type_val="prometheus", uid="visiontel-prometheus")
HEIGHT = 8
Target = tuple[str, str]  # (PromQL, legend)


def query(
    expr: str,
    legend: str = "",
    *,
    ref: str = "A",
    exemplar: bool = False,
    instant: bool = False,
    heatmap_format: bool = False,
) -> prometheus_builder.Dataquery:
    target = (
        prometheus_builder.Dataquery()
        .datasource(PROMETHEUS)
        .expr(expr)
        .legend_format(legend or "__auto")
        .ref_id(ref)
        .exemplar(exemplar)
    )
    if instant:
        target.instant()
    if heatmap_format:
        # One series per `le` bucket, which the heatmap draws as rows.
        target.format(prometheus.PromQueryFormat.HEATMAP)
    return target


def _threshold_steps(line: float) -> dashboard_builder.ThresholdsConfig:
    return (
        dashboard_builder.ThresholdsConfig()
        .mode(dashboard.ThresholdsMode.ABSOLUTE)
        .steps(
            [
                dashboard.Threshold(value=None, color="green"),
                dashboard.Threshold(value=line, color="red"),
            ]
        )
    )


def timeseries(
    title: str,
    targets: Sequence[Target],
    unit: str,
    *,
    exemplars: bool = False,
    description: str = "",
    threshold: float | None = None,
) -> timeseries_builder.Panel:
    """A line chart; `threshold` draws the value an alert fires at as a red line."""
    panel = (
        timeseries_builder.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .span(12)
        .height(HEIGHT)
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
    )
    for index, (expr, legend) in enumerate(targets):
        panel.with_target(query(expr, legend, ref=chr(ord("A") + index), exemplar=exemplars))
    if threshold is not None:
        panel.thresholds(_threshold_steps(threshold)).thresholds_style(
            common_builder.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE)
        )
    return panel


def heatmap_panel(title: str, expr: str, unit: str, description: str = "") -> heatmap_builder.Panel:
    """Buckets of a histogram over time, exemplars on (each links to its trace)."""
    return (
        heatmap_builder.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .span(24)
        .height(HEIGHT)
        .calculate(False)  # the buckets are Prometheus's, not Grafana's
        .y_axis(heatmap_builder.YAxisConfig().unit(unit))
        .cell_gap(1)
        .color(
            # Grafana's own defaults for scale/exponent/steps/fill: the SDK leaves them at
            # zero values, and 0 steps would give the scale no colours at all.
            heatmap_builder.HeatmapColorOptions()
            .mode(heatmap.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .scale(heatmap.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
            .fill("dark-orange")
        )
        .exemplars_color("rgba(255,0,255,0.7)")
        .with_target(query(expr, "{{le}}", exemplar=True, heatmap_format=True))
    )


def stat(title: str, expr: str, unit: str) -> stat_builder.Panel:
    return (
        stat_builder.Panel()
        .title(title)
        .datasource(PROMETHEUS)
        .unit(unit)
        .span(12)
        .height(HEIGHT)
        .with_target(query(expr, instant=True))
    )


def variable(name: str, label_values: str, label: str) -> dashboard_builder.QueryVariable:
    """A multi-select of a label's values; "All" sends `.*` (a regex, so use =~)."""
    return (
        dashboard_builder.QueryVariable(name)
        .label(label)
        .datasource(PROMETHEUS)
        .query({"query": label_values, "refId": f"{name}-values"})
        .include_all(True)
        .multi(True)
        .all_value(".*")
        .current(dashboard.VariableOption(text="All", value="$__all"))
        .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard.VariableSort.ALPHABETICAL_ASC)
    )


Panel = timeseries_builder.Panel | heatmap_builder.Panel | stat_builder.Panel


def dashboard_json(
    uid: str,
    title: str,
    description: str,
    panels: Sequence[Panel],
    variables: Sequence[dashboard_builder.QueryVariable] = (),
) -> str:
    """The dashboard as Grafana's JSON; panels flow left to right, two to a row."""
    board = (
        dashboard_builder.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["visiontel"])
        .timezone("browser")
        .refresh("30s")
        .time("now-1h", "now")
        .version(1)
        .readonly()  # provisioned from files: edits in the UI would be lost
    )
    for variable_builder in variables:
        board.with_variable(variable_builder)
    for index, panel in enumerate(panels):
        board.with_panel(panel.id(index + 1))
    model = board.build()
    if model.templating is None or model.templating.list_val is None:
        # An empty list rather than none: readers (and our tests) index templating.list.
        model.templating = dashboard.DashboardDashboardTemplating(list_val=[])
    if model.annotations is None or model.annotations.list_val is None:
        model.annotations = dashboard.AnnotationContainer(list_val=[])
    return json.dumps(model, cls=JSONEncoder, indent=2) + "\n"
