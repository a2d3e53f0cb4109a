"""Spans straight to OTLP/JSON, without building protobuf messages first.

Encoding a span through ``encode_spans`` and then ``MessageToDict`` costs about twice what
the SDK spends creating the span, and spans are the demo's busiest signal (a dozen per
frame). This writes the same JSON directly; a test checks it against the protobuf path
field for field. Defaults are left out as the protobuf JSON mapping leaves them out;
64-bit integers are strings, enums integers, ids hex.
"""

from __future__ import annotations

import base64
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind

_KIND = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
T = TypeVar("T", bound="_Signal")


def value(raw: Any) -> dict[str, Any]:
    """An AnyValue."""
    kind = type(raw)
    # Exact-type fast paths first: nearly every attribute is a str, int or float.
    if kind is str:
        return {"stringValue": raw}
    if kind is int:
        return {"intValue": str(raw)}
    if kind is float and math.isfinite(raw):
        return {"doubleValue": raw}
    if raw is None:
        return {}
    if isinstance(raw, bool):
        return {"boolValue": raw}
    if isinstance(raw, str):
        return {"stringValue": raw}
    if isinstance(raw, int):
        return {"intValue": str(raw)}
    if isinstance(raw, float):
        if math.isnan(raw):
            return {"doubleValue": "NaN"}
        if math.isinf(raw):
            return {"doubleValue": "Infinity" if raw > 0 else "-Infinity"}
        return {"doubleValue": raw}
    if isinstance(raw, bytes):
        return {"bytesValue": base64.b64encode(raw).decode()}
    if isinstance(raw, Sequence):
        items = [value(v) for v in raw]
        return {"arrayValue": {"values": items} if items else {}}
    if isinstance(raw, Mapping):
        pairs = [{"key": str(k), "value": value(v)} for k, v in raw.items()]
        return {"kvlistValue": {"values": pairs} if pairs else {}}
    raise TypeError(f"cannot encode {type(raw).__name__}")


def attributes(raw: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return [{"key": k, "value": value(v)} for k, v in raw.items()] if raw else []


def _put(out: dict[str, Any], key: str, item: Any) -> None:
    if item:  # the JSON mapping omits zero, empty strings and empty lists
        out[key] = item


def _flags(parent: SpanContext | None) -> int:
    return _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)


def span(sdk: ReadableSpan) -> dict[str, Any]:
    # The hot path of the exporter thread (a dozen spans per frame): the common case (no
    # events, links, drops or trace state) costs a handful of dict stores; the JSON
    # mapping leaves zero, empty strings and empty lists out.
    context = sdk.get_span_context()
    assert context is not None
    parent = sdk.parent
    out: dict[str, Any] = {
        "traceId": f"{context.trace_id:032x}",
        "spanId": f"{context.span_id:016x}",
    }
    if context.trace_state:
        out["traceState"] = ",".join(f"{k}={v}" for k, v in context.trace_state.items())
    if parent:
        out["parentSpanId"] = f"{parent.span_id:016x}"
    out["flags"] = _flags(parent)
    if sdk.name:
        out["name"] = sdk.name
    out["kind"] = _KIND[sdk.kind]
    if sdk.start_time:
        out["startTimeUnixNano"] = str(sdk.start_time)
    if sdk.end_time:
        out["endTimeUnixNano"] = str(sdk.end_time)
    raw = sdk.attributes
    if raw:
        out["attributes"] = [{"key": k, "value": value(v)} for k, v in raw.items()]
    if sdk.dropped_attributes:
        out["droppedAttributesCount"] = sdk.dropped_attributes
    if sdk.events:
        out["events"] = [_event(event) for event in sdk.events]
    if sdk.dropped_events:
        out["droppedEventsCount"] = sdk.dropped_events
    if sdk.links:
        out["links"] = [_link(link) for link in sdk.links]
    if sdk.dropped_links:
        out["droppedLinksCount"] = sdk.dropped_links
    status: dict[str, Any] = {}
    _put(status, "message", sdk.status.description or "")
    _put(status, "code", sdk.status.status_code.value)
    out["status"] = status
    return out


def _event(event: Event) -> dict[str, Any]:
    encoded: dict[str, Any] = {}
    _put(encoded, "timeUnixNano", str(event.timestamp) if event.timestamp else "")
    _put(encoded, "name", event.name)
    _put(encoded, "attributes", attributes(event.attributes))
    _put(encoded, "droppedAttributesCount", event.dropped_attributes)
    return encoded


def _link(link: Link) -> dict[str, Any]:
    encoded: dict[str, Any] = {
        "traceId": f"{link.context.trace_id:032x}",
        "spanId": f"{link.context.span_id:016x}",
    }
    _put(encoded, "attributes", attributes(link.attributes))
    _put(encoded, "droppedAttributesCount", link.dropped_attributes)
    encoded["flags"] = _flags(link.context)
    return encoded


def _scope(scope: InstrumentationScope | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if scope is not None:
        _put(out, "name", scope.name)
        _put(out, "version", scope.version or "")
        _put(out, "attributes", attributes(scope.attributes))
    return out


class _Signal(Protocol):
    """What grouping needs of a finished span or log record."""

    @property
    def resource(self) -> Resource: ...

    @property
    def instrumentation_scope(self) -> InstrumentationScope | None: ...


def grouped(
    items: Sequence[T], encode: Callable[[T], dict[str, Any]], kind: str
) -> list[dict[str, Any]]:
    """``resource<Kind>`` entries: items encoded, grouped by resource then scope.

    ``kind`` is ``Spans`` or ``Logs`` (``scopeSpans``/``spans``, ``scopeLogs``/``logRecords``).
    """
    # Keyed by identity first: Resource.__hash__ serialises every attribute to JSON, which
    # per item cost more than encoding the item. Equal resources are merged afterwards.
    by_identity: dict[int, tuple[Resource, dict[Any, list[dict[str, Any]]]]] = {}
    for item in items:
        found = by_identity.get(id(item.resource))
        if found is None:
            found = by_identity[id(item.resource)] = (item.resource, defaultdict(list))
        found[1][item.instrumentation_scope or None].append(encode(item))
    merged: dict[Resource, dict[Any, list[dict[str, Any]]]] = {}
    for resource, scopes in by_identity.values():
        into = merged.setdefault(resource, defaultdict(list))
        for scope, encoded in scopes.items():
            into[scope].extend(encoded)
    inner = "spans" if kind == "Spans" else "logRecords"
    out = []
    for resource, scopes in merged.items():
        scope_entries = []
        for scope, encoded in scopes.items():
            entry: dict[str, Any] = {"scope": _scope(scope), inner: encoded}
            _put(entry, "schemaUrl", scope.schema_url if scope is not None else "")
            scope_entries.append(entry)
        resource_entry: dict[str, Any] = {"resource": {}, f"scope{kind}": scope_entries}
        _put(resource_entry["resource"], "attributes", attributes(resource.attributes))
        _put(resource_entry, "schemaUrl", resource.schema_url)
        out.append(resource_entry)
    return out


def request(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """An ExportTraceServiceRequest, grouped by resource then scope like the encoder does."""
    resource_spans = grouped(spans, span, "Spans")
    return {"resourceSpans": resource_spans} if resource_spans else {}
