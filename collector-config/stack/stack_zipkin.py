"""Zipkin in the local stack: the trace UI a person opens (Lens, at /zipkin/).

Zipkin's server (toolchain.py zipkin: the exec jar from Maven Central, run on the machine's
Java) keeps spans in memory and serves Lens and its JSON API (/api/v2/trace/<id>) on one
loopback port. It binds port 0 itself and logs the port it got, which is read back from
its log: no port is picked for it, so none can be taken before it binds.

Zipkin's server takes spans in Zipkin's format only. OTLP input would need the zipkin-otel
project's server module, which the Maven Central this project can reach does not serve
(every release of io.zipkin.contrib.otel:zipkin-module-otel answers 404), and the
collector's `zipkin` exporter exists here only at v0.148.0, older than our collector. So
the stack's collector sends its traces pipeline, besides Jaeger, to `Bridge`: an
OTLP/HTTP-JSON receiver in the stack's own process (also bound to port 0) that rewrites
each batch as Zipkin v2 JSON and posts it to Zipkin.

Standard library only, like stack.py.
"""

from __future__ import annotations

import base64
import gzip
import http.server
import json
import pathlib
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from stack_logs import log_tail as _tail
from stack_logs import read_log as _read

# What Armeria (Zipkin's HTTP server) logs once it listens, with the port it bound.
_SERVING = re.compile(r"Serving HTTP at /127\.0\.0\.1:(\d+)")
# OTLP span kinds, by number (the collector's JSON) and by name (protojson), to Zipkin's.
_KINDS = {2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_KIND_NAMES = {
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
_STATUS_NAMES = {"STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


def command(jar: str) -> tuple[list[str], dict[str, str]]:
    """Arguments and environment that run Zipkin in memory on a loopback port of its choosing."""
    java = shutil.which("java")
    if java is None:
        raise SystemExit("java is not on PATH: Zipkin's server needs Java 17 or later")
    args = [
        java,
        # A UI for a few hundred test traces: a small heap, and the quick C1 compiler only,
        # which starts Spring Boot markedly faster on two busy cores.
        "-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        "-jar", jar,
        # The whole first port entry: Spring takes an indexed list from one source only.
        "--armeria.ports[0].ip=127.0.0.1",
        "--armeria.ports[0].port=0",
        "--armeria.ports[0].protocols[0]=http",
    ]  # fmt: skip
    env = {"STORAGE_TYPE": "mem", "SELF_TRACING_ENABLED": "false"}
    return args, env


def wait_ready(proc: subprocess.Popen[bytes], log: pathlib.Path, timeout: float) -> str:
    """Zipkin's address ("127.0.0.1:port") once it has logged its port and /health says UP."""
    deadline = time.monotonic() + timeout
    address = ""
    last: object = "no `Serving HTTP at` line in the log yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Zipkin exited ({proc.returncode}):\n{_tail(log)}")
        if not address:
            found = _SERVING.search(_read(log))
            address = f"127.0.0.1:{found.group(1)}" if found else ""
        if address:
            try:
                with urllib.request.urlopen(f"http://{address}/health", timeout=2) as response:
                    if json.loads(response.read()).get("status") == "UP":
                        return address
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = exc
        time.sleep(0.25)
    raise RuntimeError(f"Zipkin not ready after {timeout} s (last: {last}):\n{_tail(log)}")


# --- OTLP JSON -> Zipkin v2 JSON ------------------------------------------------------------
def _hex_id(value: Any) -> str:
    """OTLP JSON ids are hex (the collector writes them so); protojson would write base64."""
    text = str(value or "")
    if re.fullmatch(r"[0-9a-fA-F]*", text):
        return text.lower()
    return base64.b64decode(text).hex()


def _value(value: dict[str, Any]) -> Any:
    """An OTLP AnyValue as plain JSON data."""
    if "arrayValue" in value:
        return [_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return {
            kv["key"]: _value(kv.get("value", {})) for kv in value["kvlistValue"].get("values", [])
        }
    if "intValue" in value:
        return int(value["intValue"])
    for key in ("stringValue", "boolValue", "doubleValue", "bytesValue"):
        if key in value:
            return value[key]
    return None


def _text(value: Any) -> str:
    """Zipkin tags are strings: strings stay, booleans as true/false, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _attributes(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {kv["key"]: _value(kv.get("value", {})) for kv in items}


def _enum(value: Any, names: dict[str, int]) -> int:
    return names.get(value, 0) if isinstance(value, str) else int(value or 0)


def to_zipkin(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """An ExportTraceServiceRequest (OTLP JSON) as Zipkin v2 spans.

    service.name goes to localEndpoint (Zipkin has no other resource attributes); span
    attributes become tags, events annotations; the scope and an error status become the
    tags OpenTelemetry's own Zipkin exporters write (otel.scope.*, otel.status_code, error).
    """
    spans: list[dict[str, Any]] = []
    for resource_spans in payload.get("resourceSpans", []):
        resource = _attributes(resource_spans.get("resource", {}).get("attributes", []))
        endpoint = {"serviceName": str(resource.get("service.name", "unknown_service"))}
        for scope_spans in resource_spans.get("scopeSpans", []):
            scope = scope_spans.get("scope", {})
            for span in scope_spans.get("spans", []):
                spans.append(_span(span, endpoint, scope))
    return spans


def _span(span: dict[str, Any], endpoint: dict[str, str], scope: dict[str, Any]) -> dict[str, Any]:
    start = int(span.get("startTimeUnixNano", 0))
    end = int(span.get("endTimeUnixNano", start))
    tags = {key: _text(value) for key, value in _attributes(span.get("attributes", [])).items()}
    if scope.get("name"):
        tags["otel.scope.name"] = str(scope["name"])
    if scope.get("version"):
        tags["otel.scope.version"] = str(scope["version"])
    status = span.get("status", {})
    code = _enum(status.get("code"), _STATUS_NAMES)
    if code == 2:
        tags["otel.status_code"] = "ERROR"
        tags["error"] = str(status.get("message", ""))
    elif code == 1:
        tags["otel.status_code"] = "OK"
    out: dict[str, Any] = {
        "traceId": _hex_id(span["traceId"]),
        "id": _hex_id(span["spanId"]),
        "name": span.get("name", ""),
        "timestamp": start // 1000,
        "duration": max(1, (end - start) // 1000),  # Zipkin drops a 0 duration
        "localEndpoint": endpoint,
        "tags": tags,
    }
    parent = _hex_id(span.get("parentSpanId"))
    if parent:
        out["parentId"] = parent
    kind = _KINDS.get(_enum(span.get("kind"), _KIND_NAMES))
    if kind:
        out["kind"] = kind
    annotations = []
    for event in span.get("events", []):
        attributes = _attributes(event.get("attributes", []))
        value = event.get("name", "")
        if attributes:
            value = f"{value} {json.dumps(attributes, sort_keys=True)}"
        annotations.append(
            {"timestamp": int(event.get("timeUnixNano", start)) // 1000, "value": value}
        )
    if annotations:
        out["annotations"] = annotations
    return out


class Bridge:
    """OTLP/HTTP (JSON) in, Zipkin v2 JSON out to `zipkin`; on 127.0.0.1, a port the kernel
    gives it (`address`). A batch Zipkin refused is answered 503, which the collector's
    exporter retries."""

    def __init__(self, zipkin: str) -> None:
        spans_url = f"http://{zipkin}/api/v2/spans"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path.split("?")[0] != "/v1/traces":
                    self._answer(404, "only /v1/traces")
                    return
                if "json" not in self.headers.get("Content-Type", ""):
                    self._answer(415, "OTLP JSON only (encoding: json)")
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                try:
                    spans = to_zipkin(json.loads(body))
                except (ValueError, KeyError, TypeError) as exc:
                    self._answer(400, f"not an OTLP JSON trace request: {exc}")
                    return
                request = urllib.request.Request(
                    spans_url, data=json.dumps(spans).encode(), method="POST",
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
                try:
                    with urllib.request.urlopen(request, timeout=10):
                        pass
                except (urllib.error.URLError, OSError) as exc:
                    self._answer(503, f"Zipkin did not take the spans: {exc}")
                    return
                self._answer(200, "")

            def _answer(self, code: int, message: str) -> None:
                # An empty ExportTraceServiceResponse: full success.
                body = b"{}" if code == 200 else json.dumps({"message": message}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass  # the collector logs failed exports; successes need no line

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="zipkin-bridge", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def collector_override(bridge: str, trace_exporters: list[str]) -> dict[str, Any]:
    """Collector configuration adding the bridge to the traces pipeline.

    trace_exporters: the pipeline's exporters as the recipe names them; a list in an
    override replaces the recipe's, so they are repeated with the bridge's added.
    """
    return {
        "exporters": {"otlp_http/zipkin": {
            "traces_endpoint": f"http://{bridge}/v1/traces",
            "encoding": "json",
            "compression": "none",
        }},
        "service": {"pipelines": {"traces": {"exporters": [*trace_exporters,
                                                           "otlp_http/zipkin"]}}},
    }  # fmt: skip


def lens_url(zipkin: str, trace_id: str | None = None) -> str:
    """Lens, or one trace in it."""
    return f"http://{zipkin}/zipkin/" + (f"traces/{trace_id}" if trace_id else "")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def trace(zipkin: str, trace_id: str) -> list[dict[str, Any]]:
    """One trace's spans from Zipkin's API; [] while it has none."""
    try:
        return list(get_json(f"http://{zipkin}/api/v2/trace/{trace_id}"))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise


def frame_trace(zipkin: str, services: tuple[str, ...], timeout: float) -> str | None:
    """The id of a recent trace with spans from every one of `services` (the first of
    which is searched by), waited for up to `timeout` s; None when there is none by then."""
    deadline = time.monotonic() + timeout
    while True:
        found = get_json(f"http://{zipkin}/api/v2/traces?serviceName={services[0]}&limit=50")
        for spans in found:
            if {s.get("localEndpoint", {}).get("serviceName") for s in spans} >= set(services):
                return str(spans[0]["traceId"])
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)
