"""Exporters that append OTLP JSON to a file: one line per export request.

Metrics go through the same protobuf encoder the OTLP exporters use, so a file holds
exactly what would have gone over the wire; spans and log records, written for every
frame, are written directly to the same JSON (``_spanjson``, ``_logjson``, each checked
against the encoder in the tests).
The JSON follows the OTLP/JSON mapping: the proto3 mapping with lowerCamelCase keys and
integer enums, except that trace and span ids are hex strings, not base64. One request per
line is the layout the collector's `file` exporter writes and its `otlpjsonfile` receiver
reads back.
"""

from __future__ import annotations

import base64
import json
import logging
import pathlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from visiontel.demo import _logjson, _spanjson

_log = logging.getLogger("visiontel.demo")
_ID_KEYS = frozenset(("traceId", "spanId", "parentSpanId"))


def _hex_ids(node: Any) -> Any:
    """Rewrite base64 id fields (the proto3 mapping of bytes) as OTLP/JSON hex strings."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)
    return node


def to_otlp_json(message: Message) -> str:
    """One export request as a single line of OTLP/JSON."""
    as_dict = MessageToDict(message, use_integers_for_enums=True)
    return json.dumps(_hex_ids(as_dict), separators=(",", ":"))


class _JsonLines:
    """The file shared by one exporter: opened lazily, appended to under a lock."""

    def __init__(self, path: pathlib.Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._failed = False

    def write(self, encode: Callable[[], str]) -> bool:
        try:
            line = encode()
            with self._lock, self._path.open("a", encoding="utf-8") as out:
                out.write(line + "\n")
            return True
        except Exception:
            # Telemetry must not stop the pipeline: say so once, keep running.
            if not self._failed:
                self._failed = True
                _log.warning("cannot write telemetry to %s", self._path, exc_info=True)
            return False


class FileSpanExporter(SpanExporter):
    def __init__(self, path: pathlib.Path) -> None:
        self._out = _JsonLines(path)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # Spans are the busiest signal: written directly (see _spanjson), not via protobuf.
        ok = self._out.write(lambda: json.dumps(_spanjson.request(spans), separators=(",", ":")))
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE


class FileMetricExporter(MetricExporter):
    def __init__(self, path: pathlib.Path) -> None:
        super().__init__()
        self._out = _JsonLines(path)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        ok = self._out.write(lambda: to_otlp_json(encode_metrics(metrics_data)))
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


class FileLogExporter(LogRecordExporter):
    def __init__(self, path: pathlib.Path) -> None:
        self._out = _JsonLines(path)

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        # One record per frame at the tracker: written directly too (see _logjson).
        ok = self._out.write(lambda: json.dumps(_logjson.request(batch), separators=(",", ":")))
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        return None
