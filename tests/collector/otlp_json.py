"""Hand-built OTLP/HTTP JSON requests: the tests need no SDK to talk to the collector."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any


def attrs(values: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, value in values.items():
        if isinstance(value, bool):
            wrapped = {"boolValue": value}
        elif isinstance(value, int):
            wrapped = {"intValue": str(value)}
        elif isinstance(value, float):
            wrapped = {"doubleValue": value}
        else:
            wrapped = {"stringValue": str(value)}
        out.append({"key": key, "value": wrapped})
    return out


def post(endpoint: str, signal: str, payload: dict[str, Any]) -> None:
    """POST payload to http://endpoint/v1/<signal>; raises on a non-2xx answer."""
    request = urllib.request.Request(
        f"http://{endpoint}/v1/{signal}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert 200 <= response.status < 300, response.status


def traces(resource: dict[str, Any], spans: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": attrs(resource)},
                "scopeSpans": [{"scope": {"name": "visiontel.test"}, "spans": spans}],
            }
        ]
    }


def span(
    trace_id: str,
    span_id: str,
    name: str,
    attributes: dict[str, Any],
    *,
    parent: str = "",
    duration_s: float = 0.01,
    error: bool = False,
    events: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    end = time.time_ns()
    start = end - int(duration_s * 1e9)
    out: dict[str, Any] = {
        "traceId": trace_id,
        "spanId": span_id,
        "name": name,
        "kind": 1,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(end),
        "attributes": attrs(attributes),
        "status": {"code": 2 if error else 1},
    }
    if parent:
        out["parentSpanId"] = parent
    if events:
        out["events"] = [
            {"name": e["name"], "timeUnixNano": str(end), "attributes": attrs(e["attributes"])}
            for e in events
        ]
    return out


def logs(
    resource: dict[str, Any],
    body: str,
    attributes: dict[str, Any],
    *,
    trace_id: str = "",
    span_id: str = "",
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "timeUnixNano": str(time.time_ns()),
        "severityNumber": 9,
        "severityText": "INFO",
        "body": {"stringValue": body},
        "attributes": attrs(attributes),
    }
    if trace_id:
        record["traceId"] = trace_id
        record["spanId"] = span_id
    return {
        "resourceLogs": [
            {
                "resource": {"attributes": attrs(resource)},
                "scopeLogs": [{"scope": {"name": "visiontel.test"}, "logRecords": [record]}],
            }
        ]
    }


def _point(value: float, attributes: dict[str, Any]) -> dict[str, Any]:
    now = time.time_ns()
    point: dict[str, Any] = {
        "startTimeUnixNano": str(now - 10**9),
        "timeUnixNano": str(now),
        "attributes": attrs(attributes),
    }
    if isinstance(value, int):
        point["asInt"] = str(value)
    else:
        point["asDouble"] = value
    return point


def sum_metric(
    name: str, unit: str, value: float, attributes: dict[str, Any], *, monotonic: bool = True
) -> dict[str, Any]:
    """A cumulative sum: a counter (monotonic) or an up-down counter."""
    return {
        "name": name,
        "unit": unit,
        "sum": {
            "dataPoints": [_point(value, attributes)],
            "aggregationTemporality": 2,
            "isMonotonic": monotonic,
        },
    }


def gauge_metric(name: str, unit: str, value: float, attributes: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "unit": unit, "gauge": {"dataPoints": [_point(value, attributes)]}}


def histogram_metric(
    name: str, unit: str, values: list[float], bounds: list[float], attributes: dict[str, Any]
) -> dict[str, Any]:
    counts = [0] * (len(bounds) + 1)
    for value in values:
        counts[sum(1 for b in bounds if value > b)] += 1
    point = _point(0, attributes)
    del point["asInt"]
    point.update(
        count=str(len(values)),
        sum=sum(values),
        bucketCounts=[str(c) for c in counts],
        explicitBounds=bounds,
    )
    return {
        "name": name,
        "unit": unit,
        "histogram": {"dataPoints": [point], "aggregationTemporality": 2},
    }


def metrics(resource: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceMetrics": [
            {
                "resource": {"attributes": attrs(resource)},
                "scopeMetrics": [{"scope": {"name": "visiontel.test"}, "metrics": items}],
            }
        ]
    }
