"""VictoriaLogs in the local stack: the log store the collector's logs pipeline sends to.

stack.py starts it (Stack.start_victorialogs, through the same port-retry scheme as the
other binaries) and points the collector at it with the shipped overlay
collector-config/logs-victorialogs.yaml. This module holds what is particular to
VictoriaLogs: its command line, the log line that says it is listening, its addresses,
and a client for its LogsQL query API.

VictoriaLogs (Apache-2.0) is built from its Go module by collector-config/toolchain.py
(`toolchain.py victorialogs`). One HTTP port serves everything: OTLP/HTTP ingestion
(protobuf only) on /insert/opentelemetry/v1/logs, LogsQL on /select/logsql/query, the
web UI on /select/vmui/, and /health.

Standard library only: stack.py loads it, and the tests and the demo load stack.py.
"""

from __future__ import annotations

import json
import pathlib
import urllib.parse
import urllib.request
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
# The overlay users pass as a second --config after local.yaml (or gateway.yaml); the
# stack runs it as shipped, with the endpoint below in the environment.
OVERLAY = HERE.parent / "logs-victorialogs.yaml"
ENDPOINT_VARIABLE = "VISIONTEL_VICTORIALOGS_OTLP_ENDPOINT"
# The collector's otlp_http exporter appends /v1/logs to its endpoint.
OTLP_PATH = "/insert/opentelemetry"
QUERY_PATH = "/select/logsql/query"
UI_PATH = "/select/vmui/"


class VictoriaLogs:
    """One VictoriaLogs server on loopback; `address` is "127.0.0.1:port".

    The stack picks the address and, should the port be taken, a fresh one (assign
    `address` again before the next start). The data directory stays the same across
    those starts: a start that found its port taken exited before anything was stored.
    """

    def __init__(self, address: str, data_dir: pathlib.Path) -> None:
        self.address = address
        self.data_dir = data_dir

    def command(self, binary: str) -> list[str]:
        return [binary, f"-httpListenAddr={self.address}", f"-storageDataPath={self.data_dir}"]

    @property
    def ready_marker(self) -> str:
        """What VictoriaMetrics' HTTP server logs once it listens on this address.

        VictoriaLogs also logs "started VictoriaLogs" but before the listener is bound
        (it is started in a goroutine), so that line is no sign of readiness.
        """
        return f"started server at http://{self.address}/"

    @property
    def health_url(self) -> str:
        return f"http://{self.address}/health"

    @property
    def otlp_endpoint(self) -> str:
        """The collector exporter's endpoint (it appends /v1/logs)."""
        return f"http://{self.address}{OTLP_PATH}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.address}{UI_PATH}"

    @property
    def query_url(self) -> str:
        return f"http://{self.address}{QUERY_PATH}"

    def query(self, logsql: str, limit: int = 1000) -> list[dict[str, Any]]:
        """Log entries matching a LogsQL query, each a dict of its fields.

        The answer is a stream of JSON lines, one per entry, in no particular order; every
        field is a string (`_msg` is the OTLP body, resource and record attributes keep
        their OpenTelemetry names, `trace_id`/`span_id` are lowercase hex).
        """
        form = urllib.parse.urlencode({"query": logsql, "limit": str(limit)}).encode()
        # POST: a query naming many ids may not fit in a URL.
        with urllib.request.urlopen(self.query_url, data=form, timeout=10) as response:
            lines = response.read().decode().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def quote(value: str) -> str:
    """A LogsQL string literal: double quotes, with backslashes and quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
