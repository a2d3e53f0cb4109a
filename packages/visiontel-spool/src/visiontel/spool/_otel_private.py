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

Logs have no public home in the SDK or the exporter (``opentelemetry.sdk._logs``,
``..._log_encoder``, ``..._log_exporter``) at any release; they are imported here, and the
logs exporter does not exist where they are missing.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from visiontel.spool._http import Outcome, Sender, outcome_of

TESTED = ((1, 30), (1, 45))
"""The first and last opentelemetry-exporter-otlp-proto-http (major, minor) checked."""

_logger = logging.getLogger("visiontel.spool")
_forced: bool | None = None  # tests: None = decide, False = gate shut
_version_ok: bool | None = None


def _force(value: bool | None) -> None:
    """Tests only: shut the gate (False) or let it decide again (None)."""
    global _forced, _version_ok
    _forced, _version_ok = value, None


def gate_open() -> bool:
    global _version_ok
    if _forced is False:
        return False
    if _version_ok is None:
        _version_ok = _check_version()
    return _version_ok


def _check_version() -> bool:
    try:
        installed = metadata.version("opentelemetry-exporter-otlp-proto-http")
        major, minor = (int(part) for part in installed.split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    low, high = TESTED
    if low <= (major, minor) <= high:
        return True
    _logger.info(
        "visiontel.spool: opentelemetry-exporter-otlp-proto-http %s is outside the releases "
        "it was checked against (%d.%d to %d.%d); spooled batches are sent with requests, "
        "configured from the OTEL_EXPORTER_OTLP_* variables (a credential-provider session "
        "is not used)",
        installed,
        *low,
        *high,
    )
    return False


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


def metric_preferences(exporter: Any) -> tuple[dict[type, Any] | None, dict[type, Any] | None]:
    """The OTLP metric exporter's temporality and aggregation preferences (it reads
    OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE and ..._DEFAULT_HISTOGRAM_AGGREGATION
    into them), or (None, None): the SDK's defaults."""
    if not gate_open():
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
