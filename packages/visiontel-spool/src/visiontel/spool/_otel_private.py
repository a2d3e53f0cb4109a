"""Every use of an OpenTelemetry internal in visiontel-spool, behind one gate.

The spool replays request bodies it serialized earlier, perhaps in another process, so it
needs to POST bytes, not spans. The OTLP/HTTP exporter can do that, but only privately, and
differently in each release (checked against the sources of 1.30 to 1.45):

* 1.30 - 1.34: ``exporter._export(body)``, one POST with the exporter's own timeout; it
  raises ``requests`` errors; returns a ``requests.Response``;
* 1.35 - 1.44: ``exporter._export(body, timeout_sec)``, one POST (plus one immediate
  retry on a connection error); returns a ``requests.Response``;
* 1.45: no ``_export``; ``exporter._client._compress(body)`` then
  ``exporter._client._submit(data, timeout)``, which returns a transport result with
  ``status_code`` (None on a connection error).

``private_sender(exporter)`` is the one gate: it gives a sender using the exporter's own
session/transport, endpoint, headers, TLS settings, compression and credential provider,
exactly as the exporter resolved them, only where the installed
opentelemetry-exporter-otlp-proto-http is inside ``TESTED`` and the exporter has the shape
that release is known to have. Otherwise ``None``, and the caller uses
``_http.PublicSender`` (the same request, built from the documented environment
variables; a credential-provider session is not honoured there). The same gate gives the
metric exporter's temporality and aggregation preferences (else the SDK's defaults).

Over gRPC, ``private_grpc_sender(exporter, signal)`` sends the body on the OTLP/gRPC
exporter's own ``_channel`` with its ``_headers`` as metadata, and after a failure lets it
rebuild the channel (``_initialize_channel_and_stub``), for an
opentelemetry-exporter-otlp-proto-grpc inside ``TESTED`` with that shape (1.40 on; 1.30 -
1.34 keep only a stub, 1.35 - 1.39 cannot rebuild). Otherwise ``_grpc.GrpcSender``.

Logs have no public home in the SDK or the exporter (``opentelemetry.sdk._logs``,
``..._log_encoder``, ``..._log_exporter``) at any release; they are imported here, and the
logs exporter does not exist where they are missing.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

from visiontel._support.gate import VersionGate
from visiontel.spool._http import Outcome, Sender, outcome_of

TESTED = ((1, 30), (1, 45))
"""The first and last OTLP exporter (major, minor) checked, HTTP and gRPC alike."""

_logger = logging.getLogger("visiontel.spool")
_forced: bool | None = None  # tests: None = decide, False = gate shut
HTTP_DIST = "opentelemetry-exporter-otlp-proto-http"
GRPC_DIST = "opentelemetry-exporter-otlp-proto-grpc"
_INSTEAD = (
    "spooled batches are sent by visiontel-spool's own client, configured from the "
    "OTEL_EXPORTER_OTLP_* variables (a credential provider is not used)"
)
_gates = {
    dist: VersionGate(dist, TESTED, logger=_logger, instead=_INSTEAD)
    for dist in (HTTP_DIST, GRPC_DIST)
}


def _force(value: bool | None) -> None:
    """Tests only: shut the gate (False) or let it decide again (None)."""
    global _forced
    _forced = value
    for gate in _gates.values():
        gate.reset()


def gate_open(dist: str = HTTP_DIST) -> bool:
    if _forced is False:
        return False
    return _gates[dist].is_open()


def private_sender(exporter: Any) -> Sender | None:
    """The exporter's own one-POST code for a request body, or None (use the public one)."""
    if not gate_open():
        return None
    client = getattr(exporter, "_client", None)
    if callable(getattr(client, "_submit", None)) and callable(getattr(client, "_compress", None)):
        return _client_sender(client)
    export = getattr(exporter, "_export", None)
    if not callable(export):
        return None
    try:
        takes_timeout = "timeout_sec" in inspect.signature(export).parameters
    except (TypeError, ValueError):
        return None
    return _export_sender(export, takes_timeout)


def _client_sender(client: Any) -> Sender:
    def send(body: bytes, timeout: float) -> Outcome:
        try:
            result = client._submit(client._compress(body), max(timeout, 0.001))
        except Exception:  # a transport that raises instead of reporting: no answer
            return Outcome.RETRY
        status = getattr(result, "status_code", None)
        return outcome_of(status if isinstance(status, int) else None)

    return send


def _export_sender(export: Any, takes_timeout: bool) -> Sender:
    def send(body: bytes, timeout: float) -> Outcome:
        try:
            response = export(body, max(timeout, 0.001)) if takes_timeout else export(body)
        except Exception:  # requests' connection errors and timeouts: no answer
            return Outcome.RETRY
        status = getattr(response, "status_code", None)
        return outcome_of(status if isinstance(status, int) else None)

    return send


# --- gRPC: the exporter's own channel and metadata ------------------------------------------
def private_grpc_sender(exporter: Any, signal: str) -> Sender | None:
    """A unary call with the body as it is, on the OTLP/gRPC exporter's own channel and with
    its metadata, or None (use ``_grpc.GrpcSender``)."""
    if not gate_open(GRPC_DIST):
        return None
    from visiontel.spool import _grpc  # grpcio: only where the gRPC exporter is

    has_channel = callable(getattr(getattr(exporter, "_channel", None), "unary_unary", None))
    rebuild = getattr(exporter, "_initialize_channel_and_stub", None)
    if not (
        has_channel and callable(rebuild) and isinstance(getattr(exporter, "_headers", None), tuple)
    ):
        # 1.30 - 1.34 keep no channel; 1.35 - 1.39 keep one they cannot rebuild, which after
        # an outage waits out gRPC's reconnect backoff (29 s late after 80 s down, measured;
        # up to 2 min). The public channel caps that backoff and reads the same settings.
        return None

    def send(body: bytes, timeout: float) -> Outcome:
        # Looked up each time: the exporter replaces the channel after UNAVAILABLE.
        outcome = _grpc.send_on(exporter._channel, signal, body, exporter._headers, timeout)
        if outcome is Outcome.RETRY and not getattr(exporter, "_shutdown", False):
            # What the exporter does itself on UNAVAILABLE: a fresh channel connects at
            # once, where the old one waits out its reconnect backoff.
            old = exporter._channel
            try:
                rebuild()
                old.close()
            except Exception as error:  # a new channel failed: the old one stays in use
                _logger.debug("visiontel.spool: cannot rebuild the gRPC channel: %s", error)
        return outcome

    return send


def metric_preferences(exporter: Any) -> tuple[dict[type, Any] | None, dict[type, Any] | None]:
    """The OTLP metric exporter's temporality and aggregation preferences (it reads
    OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE and ..._DEFAULT_HISTOGRAM_AGGREGATION
    into them), or (None, None): the SDK's defaults."""
    grpc = type(exporter).__module__.startswith("opentelemetry.exporter.otlp.proto.grpc")
    if not gate_open(GRPC_DIST if grpc else HTTP_DIST):
        return None, None
    temporality = getattr(exporter, "_preferred_temporality", None)
    aggregation = getattr(exporter, "_preferred_aggregation", None)
    if isinstance(temporality, dict) and isinstance(aggregation, dict):
        return dict(temporality), dict(aggregation)
    return None, None


# --- logs: the SDK's and the exporter's only homes for them ---------------------------------
def log_classes() -> tuple[type[Any], type[Any]] | None:
    """(exporter base class, export result enum) of the installed SDK's logs, or None."""
    try:
        from opentelemetry.sdk._logs import export as logs_export
    except ImportError:
        return None
    base = getattr(logs_export, "LogRecordExporter", None) or getattr(
        logs_export, "LogExporter", None
    )
    result = getattr(logs_export, "LogRecordExportResult", None) or getattr(
        logs_export, "LogExportResult", None
    )
    return (base, result) if base is not None and result is not None else None


def encode_logs(batch: Sequence[Any]) -> bytes:
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs as encode

    return bytes(encode(batch).SerializePartialToString())


def http_log_exporter(**kwargs: Any) -> Any:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    return OTLPLogExporter(**kwargs)


def grpc_log_exporter(**kwargs: Any) -> Any:
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

    return OTLPLogExporter(**kwargs)
