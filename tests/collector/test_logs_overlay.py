"""collector-config/logs-victorialogs.yaml, the overlay that sends the logs pipeline to
VictoriaLogs: accepted by the built collector over each recipe it is documented for, and
on the wire what VictoriaLogs takes. (The stack's end-to-end tests send through it into a
real VictoriaLogs; these run in `nox -s collector`, which has none.)
"""

from __future__ import annotations

import gzip
import http.server
import os
import pathlib
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from collector_support import CONFIG_DIR, collector_env, dummy_env, load_yaml, pick_port
from otlp_json import logs, post

OVERLAY = CONFIG_DIR / "logs-victorialogs.yaml"
RECIPES_WITH_LOKI = ("local.yaml", "gateway.yaml")


@pytest.mark.parametrize("recipe", RECIPES_WITH_LOKI)
def test_overlay_passes_validate_over_the_recipe(
    otelcol: pathlib.Path, recipe: str, tls_files: dict[str, pathlib.Path]
) -> None:
    path = CONFIG_DIR / recipe
    base = {k: v for k, v in os.environ.items() if not k.startswith("VISIONTEL_")}
    result = subprocess.run(
        [str(otelcol), "validate", "--config", str(path), "--config", str(OVERLAY)],
        env={**base, **dummy_env(path, tls_files)},
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{recipe} + overlay:\n{result.stdout}\n{result.stderr}"


def test_overlay_changes_only_the_logs_exporters() -> None:
    """Merged over a recipe, the overlay adds one exporter and replaces the logs pipeline's
    exporter list; the recipe's receivers and processors (the privacy steps) stay."""
    overlay = load_yaml(OVERLAY)
    assert set(overlay) == {"exporters", "service"}
    assert list(overlay["exporters"]) == ["otlp_http/victorialogs"]
    assert overlay["service"] == {"pipelines": {"logs": {"exporters": ["otlp_http/victorialogs"]}}}
    for recipe in RECIPES_WITH_LOKI:
        # The pipeline it replaces is the one holding the Loki exporter in each recipe.
        pipelines = load_yaml(CONFIG_DIR / recipe)["service"]["pipelines"]
        assert pipelines["logs"]["exporters"] == ["otlp_http/loki"], recipe


@pytest.fixture
def fake_victorialogs() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(port, requests): an HTTP server that records each POST (path, headers, body) and
    answers 200."""
    seen: list[dict[str, Any]] = []

    class Ingest(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    # Port 0: this server is ours, so the kernel's choice can be read back without a race.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ingest)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


def test_overlay_posts_otlp_protobuf_to_the_victorialogs_path(
    start_collector: Any, fake_victorialogs: tuple[int, list[dict[str, Any]]]
) -> None:
    port, seen = fake_victorialogs
    env = collector_env(
        VISIONTEL_PROMETHEUS_EXPORTER_ENDPOINT=f"127.0.0.1:{pick_port()}",
        VISIONTEL_VICTORIALOGS_OTLP_ENDPOINT=f"http://127.0.0.1:{port}/insert/opentelemetry",
    )
    start_collector([CONFIG_DIR / "local.yaml", OVERLAY], env)
    post(env["VISIONTEL_OTLP_HTTP_ENDPOINT"], "logs", logs({"service.name": "o"}, "to VL", {}))
    deadline = time.monotonic() + 20  # local.yaml's batch processor waits up to 2 s
    while not seen and time.monotonic() < deadline:
        time.sleep(0.2)
    assert seen, "the collector sent nothing to the VictoriaLogs endpoint"
    (request,) = seen
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert request["path"] == "/insert/opentelemetry/v1/logs"
    # VictoriaLogs refuses OTLP JSON; gzip is among the encodings it reads.
    assert headers["content-type"] == "application/x-protobuf"
    body = request["body"]
    if headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    assert b"to VL" in body
    assert headers["vl-stream-fields"] == (
        "service.namespace,service.name,deployment.environment.name,host.name"
    )
