"""The stack's OTLP -> Zipkin bridge (collector-config/stack/stack_zipkin.py), without Java:
the conversion on hand-written OTLP JSON, and the HTTP bridge against a stand-in Zipkin."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import collector_support  # noqa: F401 - puts collector-config/stack on sys.path
import pytest
import stack_zipkin

TRACE = "5b8efff798038103d269b633813fc60c"
ROOT_SPAN, CHILD = "eee19b7ec3c1b174", "eee19b7ec3c1b173"


def _request(**child: Any) -> dict[str, Any]:
    """An ExportTraceServiceRequest as the collector's JSON encoding writes it."""
    return {"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "detector"}},
            {"key": "host.name", "value": {"stringValue": "node-1"}},
        ]},
        "scopeSpans": [{
            "scope": {"name": "visiontel.torch", "version": "1.2.3"},
            "spans": [
                {"traceId": TRACE, "spanId": ROOT_SPAN, "name": "frame", "kind": 2,
                 "startTimeUnixNano": "1700000000000000000",
                 "endTimeUnixNano": "1700000000250000000", "status": {}},
                {"traceId": TRACE, "spanId": CHILD, "parentSpanId": ROOT_SPAN,
                 "name": "detect", "kind": 1, "startTimeUnixNano": "1700000000001000000",
                 "endTimeUnixNano": "1700000000001000000",
                 "attributes": [
                     {"key": "visiontel.model.name", "value": {"stringValue": "yolo"}},
                     {"key": "visiontel.detections", "value": {"intValue": "7"}},
                     {"key": "visiontel.cached", "value": {"boolValue": False}},
                     {"key": "visiontel.classes", "value": {"arrayValue": {"values": [
                         {"stringValue": "person"}, {"stringValue": "car"}]}}},
                 ],
                 "events": [{"timeUnixNano": "1700000000001000500", "name": "nms",
                             "attributes": [{"key": "kept", "value": {"intValue": "3"}}]}],
                 "status": {"code": 2, "message": "CUDA out of memory"}, **child},
            ],
        }],
    }]}  # fmt: skip


def test_spans_keep_ids_parents_times_service_and_attributes() -> None:
    root, child = stack_zipkin.to_zipkin(_request())
    assert root == {
        "traceId": TRACE, "id": ROOT_SPAN, "name": "frame", "kind": "SERVER",
        "timestamp": 1_700_000_000_000_000, "duration": 250_000,
        "localEndpoint": {"serviceName": "detector"},
        "tags": {"otel.scope.name": "visiontel.torch", "otel.scope.version": "1.2.3"},
    }  # fmt: skip
    assert child["parentId"] == ROOT_SPAN
    assert "kind" not in child  # INTERNAL: Zipkin has no kind for it
    assert child["duration"] == 1  # Zipkin drops a zero duration: the shortest it keeps
    assert child["tags"]["visiontel.detections"] == "7"
    assert child["tags"]["visiontel.cached"] == "false"
    assert json.loads(child["tags"]["visiontel.classes"]) == ["person", "car"]
    assert child["tags"]["error"] == "CUDA out of memory"
    assert child["tags"]["otel.status_code"] == "ERROR"
    assert child["annotations"] == [
        {"timestamp": 1_700_000_000_001_000, "value": 'nms {"kept": 3}'}
    ]


def test_protojson_ids_and_enum_names_are_read_too() -> None:
    ids = {
        "traceId": base64.b64encode(bytes.fromhex(TRACE)).decode(),
        "spanId": base64.b64encode(bytes.fromhex(CHILD)).decode(),
        "kind": "SPAN_KIND_CLIENT",
        "status": {"code": "STATUS_CODE_OK"},
    }
    _, child = stack_zipkin.to_zipkin(_request(**ids))
    assert (child["traceId"], child["id"], child["kind"]) == (TRACE, CHILD, "CLIENT")
    assert child["tags"]["otel.status_code"] == "OK" and "error" not in child["tags"]


@pytest.fixture
def fake_zipkin() -> Iterator[dict[str, Any]]:
    """Records what is posted to /api/v2/spans; answers `status` (202, as Zipkin does)."""
    state: dict[str, Any] = {"posted": [], "status": 202}

    class Zipkin(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state["posted"].append((self.path, json.loads(body)))
            self.send_response(state["status"])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Zipkin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["address"] = f"127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def _post(address: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://{address}/v1/traces", data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_bridge_forwards_a_batch_and_answers_a_refusal_with_a_retryable_503(
    fake_zipkin: dict[str, Any],
) -> None:
    bridge = stack_zipkin.Bridge(fake_zipkin["address"])
    try:
        assert bridge.address.startswith("127.0.0.1:") and not bridge.address.endswith(":0")
        body = json.dumps(_request()).encode()
        assert _post(bridge.address, body, "application/json") == (200, b"{}")
        ((path, spans),) = fake_zipkin["posted"]
        assert path == "/api/v2/spans"
        assert spans == stack_zipkin.to_zipkin(_request())
        fake_zipkin["status"] = 500
        assert _post(bridge.address, body, "application/json")[0] == 503
        assert _post(bridge.address, b"\x0a\x00", "application/x-protobuf")[0] == 415
    finally:
        bridge.stop()
