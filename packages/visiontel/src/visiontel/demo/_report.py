"""The end-of-run report, read back from the OTLP JSON files the services wrote.

Reading the files (not the processes' memory) is the point: what is shown is what a
backend would receive.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from visiontel.demo._telemetry import SERVICE_NAMES, SIGNALS

_BAR = 36
_SERVICE_ORDER = {name: index for index, name in enumerate(SERVICE_NAMES.values())}


@dataclass
class Span:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start: int
    end: int
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def ms(self) -> float:
        return (self.end - self.start) / 1e6


def _value(value: dict[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    if "arrayValue" in value:
        return [_value(v) for v in value["arrayValue"].get("values", [])]
    return None


def attributes(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {item["key"]: _value(item.get("value", {})) for item in items}


def requests(run_dir: pathlib.Path, service: str, signal: str) -> Iterator[dict[str, Any]]:
    """Every export request one service wrote for one signal."""
    path = run_dir / service / f"{signal}.jsonl"
    if not path.exists():
        return
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def load_spans(run_dir: pathlib.Path) -> list[Span]:
    spans: list[Span] = []
    for service in SERVICE_NAMES.values():
        for request in requests(run_dir, service, "traces"):
            for resource_spans in request.get("resourceSpans", []):
                for scope in resource_spans.get("scopeSpans", []):
                    for raw in scope.get("spans", []):
                        spans.append(
                            Span(
                                service,
                                raw["traceId"],
                                raw["spanId"],
                                raw.get("parentSpanId", ""),
                                raw["name"],
                                int(raw["startTimeUnixNano"]),
                                int(raw["endTimeUnixNano"]),
                                attributes(raw.get("attributes", [])),
                            )
                        )
    return spans


def frame_traces(spans: Sequence[Span]) -> dict[str, list[Span]]:
    """Spans grouped by trace, for traces that start with a frame's capture."""
    traces: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        traces[span.trace_id].append(span)
    return {
        trace_id: members
        for trace_id, members in traces.items()
        if any(s.name == "capture" and not s.parent_id for s in members)
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _extent(members: Sequence[Span]) -> tuple[int, int]:
    return min(s.start for s in members), max(s.end for s in members)


def typical_trace(traces: dict[str, list[Span]]) -> list[Span] | None:
    """The complete frame trace (all three services) of median duration."""
    complete = [
        members
        for members in traces.values()
        if {s.service for s in members} == set(SERVICE_NAMES.values())
    ]
    if not complete:
        return None
    complete.sort(key=lambda m: _extent(m)[1] - _extent(m)[0])
    return complete[len(complete) // 2]


def waterfall(members: Sequence[Span]) -> list[str]:
    """One frame's trace as an indented timeline, one line per span."""
    t0, t1 = _extent(members)
    total = max(t1 - t0, 1)
    children: dict[str, list[Span]] = defaultdict(list)
    ids = {s.span_id for s in members}
    for span in members:
        children[span.parent_id if span.parent_id in ids else ""].append(span)
    root = next(s for s in members if s.name == "capture")
    sequence = root.attributes.get("visiontel.frame.sequence", "?")
    end_label = f"{total / 1e6:.1f} ms"
    lines = [
        f"Trace waterfall of frame {sequence} (trace {root.trace_id}): "
        f"{total / 1e6:.1f} ms from capture to tracked",
        f"  {'service':<13} {'span':<26} |{'0 ms':<{_BAR // 2}}{end_label:>{_BAR - _BAR // 2}}|",
    ]

    def walk(span: Span, depth: int) -> None:
        left = int((span.start - t0) / total * _BAR)
        right = max(left + 1, math.ceil((span.end - t0) / total * _BAR))
        bar = " " * left + "█" * (min(right, _BAR) - left)
        label = ("  " * depth + span.name)[:26]
        lines.append(f"  {span.service:<13} {label:<26} |{bar:<{_BAR}}| {span.ms:7.2f} ms")
        for child in sorted(children[span.span_id], key=lambda s: s.start):
            walk(child, depth + 1)

    for top in sorted(children[""], key=lambda s: s.start):
        walk(top, 0)
    return lines


def stage_table(traces: dict[str, list[Span]]) -> list[str]:
    """p50/p99 of every span name across all frame traces, per model version."""
    durations: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    offsets: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for members in traces.values():
        t0 = _extent(members)[0]
        for span in members:
            version = str(span.attributes.get("visiontel.model.version", ""))
            key = (span.service, span.name, version)
            durations[key].append(span.ms)
            offsets[key].append(span.start - t0)
    order = sorted(
        durations, key=lambda k: (_SERVICE_ORDER.get(k[0], 9), percentile(offsets[k], 50), k[2])
    )
    lines = [
        "Per-stage latency (ms, over all frames):",
        f"  {'service':<13} {'span':<22} {'version':<12} {'count':>6} {'p50':>8} {'p99':>8}",
    ]
    for service, name, version in order:
        values = durations[(service, name, version)]
        lines.append(
            f"  {service:<13} {name[:22]:<22} {version[:12]:<12} {len(values):>6} "
            f"{percentile(values, 50):8.2f} {percentile(values, 99):8.2f}"
        )
    return lines


def metric_summary(run_dir: pathlib.Path) -> tuple[dict[str, set[str]], dict[str, int]]:
    """Metric names and log record counts per service."""
    names: dict[str, set[str]] = defaultdict(set)
    logs: dict[str, int] = defaultdict(int)
    for service in SERVICE_NAMES.values():
        for request in requests(run_dir, service, "metrics"):
            for rm in request.get("resourceMetrics", []):
                for scope in rm.get("scopeMetrics", []):
                    names[service].update(m["name"] for m in scope.get("metrics", []))
        for request in requests(run_dir, service, "logs"):
            for rl in request.get("resourceLogs", []):
                for scope in rl.get("scopeLogs", []):
                    logs[service] += len(scope.get("logRecords", []))
    return names, logs


def gpu_summary(run_dir: pathlib.Path) -> list[str]:
    """Last value of every hw.* gauge/sum (GPU, power, temperature) per device and series."""
    latest: dict[tuple[str, str, str], tuple[int, float, str]] = {}
    for request in requests(run_dir, SERVICE_NAMES["detector"], "metrics"):
        for rm in request.get("resourceMetrics", []):
            for scope in rm.get("scopeMetrics", []):
                for metric in scope.get("metrics", []):
                    if not metric["name"].startswith("hw."):
                        continue
                    data = metric.get("gauge") or metric.get("sum") or {}
                    for point in data.get("dataPoints", []):
                        attrs = attributes(point.get("attributes", []))
                        device = str(attrs.pop("hw.name", None) or attrs.get("hw.id") or "gpu")
                        # What tells a device's series apart (direction, task, state...).
                        series = ",".join(
                            f"{v}" for k, v in sorted(attrs.items()) if not k.startswith("hw.")
                        )
                        value = float(point.get("asDouble", point.get("asInt", 0)))
                        when = int(point.get("timeUnixNano", 0))
                        key = (device, metric["name"], series)
                        if key not in latest or when >= latest[key][0]:
                            latest[key] = (when, value, metric.get("unit", ""))
    return [
        f"  {device}: {name}{f' ({series})' if series else ''} = {_quantity(value, unit)}"
        for (device, name, series), (_, value, unit) in sorted(latest.items())
    ]


def _quantity(value: float, unit: str) -> str:
    if unit == "By":
        for scale, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if abs(value) >= scale:
                return f"{value / scale:.1f} {suffix}"
        return f"{value:g} B"
    if unit == "1":
        return f"{value * 100:.1f} %"
    return f"{value:g} {unit}".rstrip()


def files_summary(run_dir: pathlib.Path) -> list[str]:
    lines = []
    for service in SERVICE_NAMES.values():
        present = [s for s in SIGNALS if (run_dir / service / f"{s}.jsonl").exists()]
        lines.append(f"  {service:<13} " + "  ".join(f"{s}.jsonl" for s in present))
    return lines


STREAM_ATTRIBUTE = "visiontel.stream.id"
_SOURCE_COUNTERS = ("visiontel.demo.frames.sent", "visiontel.demo.frames.dropped")
_HOP_COUNTERS = ("visiontel.frames.received", "visiontel.frames.lost")
_HOPS = (("detector", "detector"), ("tracker", "sink"))  # (label, role)


def _stream_counts(
    run_dir: pathlib.Path, role: str, names: Sequence[str]
) -> dict[tuple[str, str], int]:
    """(counter, stream id) -> its total in the last export of one service's ``names``."""
    last: dict[tuple[str, str], int] = {}
    for request in requests(run_dir, SERVICE_NAMES[role], "metrics"):
        for rm in request.get("resourceMetrics", []):
            for scope in rm.get("scopeMetrics", []):
                for metric in scope.get("metrics", []):
                    if metric["name"] not in names:
                        continue
                    totals: dict[tuple[str, str], int] = defaultdict(int)
                    for point in metric.get("sum", {}).get("dataPoints", []):
                        stream = attributes(point.get("attributes", [])).get(STREAM_ATTRIBUTE)
                        if stream is not None:
                            totals[(metric["name"], str(stream))] += int(point.get("asInt", 0))
                    last.update(totals)  # cumulative: a later export holds the totals
    return last


def stream_health(run_dir: pathlib.Path) -> list[str]:
    """Per stream: frames sent and dropped by the source, received and lost at each hop.

    Lost is ``visiontel.frames.lost`` (sequence gaps) as each hop exported it: with
    ``--drop-every`` it equals the source's dropped count, without it 0.
    """
    source = _stream_counts(run_dir, "source", _SOURCE_COUNTERS)
    hops = {label: _stream_counts(run_dir, role, _HOP_COUNTERS) for label, role in _HOPS}
    streams = sorted({stream for counts in (source, *hops.values()) for _, stream in counts})
    if not streams:
        return ["Stream health: no per-stream counts were written"]
    head = "".join(f" | {label + ' received':>17} {'lost':>5}" for label, _ in _HOPS)
    lines = [
        "Stream health (frames; lost = sequence gaps seen at each hop):",
        f"  {'stream':<16} {'sent':>6} {'dropped':>7}{head}",
    ]
    for stream in streams:
        sent, dropped = (source.get((name, stream), 0) for name in _SOURCE_COUNTERS)
        cells = "".join(
            f" | {hops[label].get((_HOP_COUNTERS[0], stream), 0):>17}"
            f" {hops[label].get((_HOP_COUNTERS[1], stream), 0):>5}"
            for label, _ in _HOPS
        )
        lines.append(f"  {stream[:16]:<16} {sent:>6} {dropped:>7}{cells}")
    return lines
