"""The closing report of a canary run: stable and canary side by side, and the gates.

The gates are those of collector-config/canary/ (Argo Rollouts AnalysisTemplate, Flagger
MetricTemplates) with their default thresholds, computed here from the run's files instead
of Prometheus: latency from the spans themselves (Prometheus interpolates histogram
buckets, so its p99 differs a little), the rest from the cumulative metric points.
"""

from __future__ import annotations

import math
import pathlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from visiontel.demo._report import Span, attributes, percentile, requests
from visiontel.demo._telemetry import SERVICE_NAMES

# Defaults of collector-config/canary/argo/analysis-template.yaml (a test keeps them equal).
MIN_CANARY_IMAGES_PER_SECOND = 0.1
MAX_P99_RATIO = 1.2
MAX_ERROR_RATIO = 0.01
MAX_DETECTIONS_DRIFT = 0.25
MAX_GPU_MEMORY_RATIO = 0.95
_VERSION = "visiontel.model.version"
_SERVICE_ORDER = {name: index for index, name in enumerate(SERVICE_NAMES.values())}


def frame_version(members: Sequence[Span]) -> str:
    """The model version that served a frame: the one on its detector spans."""
    for span in members:
        version = span.attributes.get(_VERSION)
        if version:
            return str(version)
    return ""


def stage_columns(traces: dict[str, list[Span]], stable: str, canary: str) -> list[str]:
    """p50/p99 of every span name, one column group per version (of the frame)."""
    durations: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    offsets: dict[tuple[str, str], list[int]] = defaultdict(list)
    for members in traces.values():
        version = frame_version(members)
        t0 = min(s.start for s in members)
        for span in members:
            durations[(span.service, span.name, version)].append(span.ms)
            offsets[(span.service, span.name)].append(span.start - t0)
    order = sorted(offsets, key=lambda k: (_SERVICE_ORDER.get(k[0], 9), percentile(offsets[k], 50)))
    head = f"{'count':>6} {'p50':>8} {'p99':>8}"
    lines = [
        "Per-stage latency (ms), by the model version that served the frame:",
        f"  {'':<13} {'':<22} {'stable ' + stable:^24} | {'canary ' + canary:^24}",
        f"  {'service':<13} {'span':<22} {head} | {head}",
    ]
    for service, name in order:
        cells = []
        for version in (stable, canary):
            values = durations.get((service, name, version), [])
            cells.append(
                f"{len(values):>6} {percentile(values, 50):8.2f} {percentile(values, 99):8.2f}"
                if values
                else f"{0:>6} {'-':>8} {'-':>8}"
            )
        lines.append(f"  {service:<13} {name[:22]:<22} {cells[0]} | {cells[1]}")
    return lines


@dataclass
class VersionFigures:
    frames: int = 0
    forward_ms: list[float] | None = None
    detections: float = 0.0  # sum over images
    images: int = 0  # images with a detection count
    forwards: int = 0
    failed: int = 0

    @property
    def detections_per_image(self) -> float:
        return _divide(self.detections, self.images)

    @property
    def error_ratio(self) -> float:
        return _divide(self.failed, self.forwards)


def _divide(a: float, b: float) -> float:
    """a / b as PromQL divides: x / 0 is +Inf (a failed gate), 0 / 0 and NaN are NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if b == 0:
        return math.nan if a == 0 else math.copysign(math.inf, a)
    return a / b


_Points = dict[tuple[str, frozenset[tuple[str, str]]], dict[str, Any]]


def _last_points(run_dir: pathlib.Path) -> _Points:
    """The last cumulative point of every detector metric series."""
    last: _Points = {}
    for request in requests(run_dir, SERVICE_NAMES["detector"], "metrics"):
        for rm in request.get("resourceMetrics", []):
            for scope in rm.get("scopeMetrics", []):
                for metric in scope.get("metrics", []):
                    data = metric.get("histogram") or metric.get("sum") or metric.get("gauge")
                    for point in (data or {}).get("dataPoints", []):
                        attrs = attributes(point.get("attributes", []))
                        key = frozenset((k, str(v)) for k, v in attrs.items())
                        last[(metric["name"], key)] = point
    return last


def figures(
    run_dir: pathlib.Path, traces: dict[str, list[Span]], versions: Sequence[str]
) -> dict[str, VersionFigures]:
    found = {version: VersionFigures(forward_ms=[]) for version in versions}
    for members in traces.values():
        version = frame_version(members)
        if version in found:
            found[version].frames += 1
            forward = found[version].forward_ms
            assert forward is not None
            forward += [s.ms for s in members if s.name.startswith("inference ")]
    for (name, key), point in _last_points(run_dir).items():
        attrs = dict(key)
        figure = found.get(attrs.get(_VERSION, ""))
        if figure is None:
            continue
        if name == "visiontel.inference.detections":
            figure.detections += float(point.get("sum", 0.0))
            figure.images += int(point.get("count", 0))
        elif name == "visiontel.inference.duration" and attrs.get("visiontel.stage") == "inference":
            figure.forwards += int(point.get("count", 0))
            if attrs.get("error.type"):
                figure.failed += int(point.get("count", 0))
    return found


def gpu_memory_ratio(run_dir: pathlib.Path) -> float | None:
    """Highest used/limit of the detector's GPUs at their last reading; None without a GPU."""
    usage: dict[str, float] = {}
    limit: dict[str, float] = {}
    for (name, key), point in _last_points(run_dir).items():
        device = dict(key).get("hw.id", "")
        value = float(point.get("asDouble") or point.get("asInt") or 0)
        if name == "hw.gpu.memory.usage":
            usage[device] = value
        elif name == "hw.gpu.memory.limit":
            limit[device] = value
    ratios = [usage[d] / limit[d] for d in usage if limit.get(d)]
    return max(ratios) if ratios else None


def _verdict(value: float, ok: bool) -> str:
    return "no data" if math.isnan(value) else ("pass" if ok else "FAIL")


def gate_table(
    run_dir: pathlib.Path, traces: dict[str, list[Span]], stable: str, canary: str
) -> list[str]:
    """Stable and canary side by side, each gate with its value and verdict."""
    figs = figures(run_dir, traces, (stable, canary))
    s, c = figs[stable], figs[canary]
    extents = [(min(x.start for x in m), max(x.end for x in m)) for m in traces.values()]
    seconds = (max(e for _, e in extents) - min(b for b, _ in extents)) / 1e9 if extents else 0.0
    rate = _divide(c.frames, seconds)
    p99 = (percentile(s.forward_ms or [], 99), percentile(c.forward_ms or [], 99))
    ratio = _divide(p99[1], p99[0])
    drift = abs(_divide(c.detections_per_image, s.detections_per_image) - 1)
    gpu = gpu_memory_ratio(run_dir)
    gpu_value = gpu if gpu is not None else 0.0  # the templates' `or vector(0)`
    rows = [
        ("frames", f"{s.frames}", f"{c.frames}",
         f">= {MIN_CANARY_IMAGES_PER_SECOND:g} images/s ({rate:.1f}/s)",
         _verdict(rate, rate >= MIN_CANARY_IMAGES_PER_SECOND)),
        ("forward p50 (ms)", f"{percentile(s.forward_ms or [], 50):.2f}",
         f"{percentile(c.forward_ms or [], 50):.2f}", "", ""),
        ("forward p99 (ms)", f"{p99[0]:.2f}", f"{p99[1]:.2f}",
         f"canary/stable <= {MAX_P99_RATIO:g} ({ratio:.2f})",
         _verdict(ratio, ratio <= MAX_P99_RATIO)),
        ("detections per image", f"{s.detections_per_image:.2f}", f"{c.detections_per_image:.2f}",
         f"drift <= {MAX_DETECTIONS_DRIFT:g} ({drift:.2f})",
         _verdict(drift, drift <= MAX_DETECTIONS_DRIFT)),
        ("error rate", f"{s.error_ratio:.1%}", f"{c.error_ratio:.1%}",
         f"<= {MAX_ERROR_RATIO:.0%} ({c.error_ratio:.1%})",
         _verdict(c.error_ratio, c.error_ratio <= MAX_ERROR_RATIO)),
        ("GPU memory (last)", "-" if gpu is None else f"{gpu:.0%}", "(same process)",
         f"<= {MAX_GPU_MEMORY_RATIO:.0%} ({'no GPU' if gpu is None else f'{gpu:.0%}'})",
         _verdict(gpu_value, gpu_value <= MAX_GPU_MEMORY_RATIO)),
    ]  # fmt: skip
    lines = [
        f"Canary {canary} against stable {stable}: the gates of collector-config/canary/ "
        "(Argo Rollouts, Flagger) at their default thresholds:",
        f"  {'':<22} {'stable ' + stable:>16} {'canary ' + canary:>20}  {'gate':<34} verdict",
    ]
    for label, stable_cell, canary_cell, gate, verdict in rows:
        lines.append(f"  {label:<22} {stable_cell:>16} {canary_cell:>20}  {gate:<34} {verdict}")
    failed = [row[0] for row in rows if row[4] == "FAIL"]
    lines.append(
        f"  verdict: {'roll back (' + ', '.join(failed) + ')' if failed else 'promote'}"
        if all(row[4] != "no data" for row in rows)
        else "  verdict: inconclusive (a gate has no data)"
    )
    return lines


def live_columns(
    by_version: dict[str, list[tuple[float, int]]], stable: str, canary: str
) -> list[str]:
    """From the launcher's own results (no files to read: telemetry went to an endpoint)."""
    lines = [
        "Stable and canary, from the tracker's results (capture-to-result latency):",
        f"  {'':<22} {'stable ' + stable:>16} {'canary ' + canary:>20}",
    ]
    cells: dict[str, list[str]] = defaultdict(list)
    for version in (stable, canary):
        results = by_version.get(version, [])
        latencies = [latency for latency, _ in results]
        cells["frames"].append(str(len(results)))
        cells["latency p50 (ms)"].append(f"{percentile(latencies, 50):.2f}")
        cells["latency p99 (ms)"].append(f"{percentile(latencies, 99):.2f}")
        per_image = sum(d for _, d in results) / len(results) if results else math.nan
        cells["detections per image"].append(f"{per_image:.2f}")
    for label, (stable_cell, canary_cell) in cells.items():
        lines.append(f"  {label:<22} {stable_cell:>16} {canary_cell:>20}")
    lines.append("  gates: evaluate collector-config/canary/ against your Prometheus")
    return lines
