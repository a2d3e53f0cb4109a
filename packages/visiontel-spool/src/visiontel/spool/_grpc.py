"""Sending one serialized OTLP request over gRPC, once, without the exporter's retry loop.

The spooled body is the same ``Export<Signal>ServiceRequest`` protobuf the HTTP path posts,
so it is sent as it is: a unary call on ``/opentelemetry.proto.collector.<signal>.v1.
<Signal>Service/Export`` with an identity request serializer. Which spool wrote a body
does not matter; a spool filled over HTTP replays over gRPC and the other way round.

``GrpcSender`` is the public-API way: a channel built from the OTLP/gRPC exporter's
documented arguments and ``OTEL_EXPORTER_OTLP_*`` variables, read as that exporter reads
them (per-signal first, then the general one, then the default). ``_otel_private`` offers
the exporter's own channel and metadata in its place where the gate admits it.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlparse

import grpc
from opentelemetry.util.re import parse_env_headers

from visiontel.spool._http import Outcome, _env
from visiontel.spool.version import __version__

METHODS = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
DEFAULT_ENDPOINT = "http://localhost:4317"
COMPRESSIONS = {"gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}

# The OTLP specification's retryable gRPC codes (otlp.md, "Failures"). RESOURCE_EXHAUSTED
# is retryable only when the server says it can recover, by sending RetryInfo; without it
# (a batch over the server's size limit, say) retrying would block the spool's head forever.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
RETRY_INFO_KEY = "google.rpc.retryinfo-bin"


def outcome_of_error(error: grpc.RpcError) -> Outcome:
    """What a failed call means for the batch: retry it later, or drop it (spec)."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    if code in RETRYABLE:
        return Outcome.RETRY
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        trailing = (
            error.trailing_metadata()
            if callable(getattr(error, "trailing_metadata", None))
            else None
        )
        keys = {item[0] for item in trailing or ()}
        return Outcome.RETRY if RETRY_INFO_KEY in keys else Outcome.REJECTED
    if code is None:  # not a call's status at all: no answer
        return Outcome.RETRY
    return Outcome.REJECTED


def send_on(
    channel: grpc.Channel, signal: str, body: bytes, metadata: Any, timeout: float
) -> Outcome:
    """One unary Export call carrying ``body`` as it is, bounded by ``timeout``."""
    call = channel.unary_unary(METHODS[signal])  # no serializers: bytes in, bytes out
    try:
        call(body, metadata=metadata or None, timeout=max(timeout, 0.001))
    except grpc.RpcError as error:
        return outcome_of_error(error)
    except ValueError:  # a closed channel (shutdown racing a send): try again later
        return Outcome.RETRY
    return Outcome.SENT


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:  # as the exporter does: logged, and the application carries on
        logging.getLogger("visiontel.spool").error("visiontel.spool: cannot read %s", error)
        return None


def _credentials_from_env(signal: str) -> grpc.ChannelCredentials:
    """TLS as the exporter builds it: the per-signal certificate with the per-signal client
    pair if that certificate is set, else the general three, else the system's roots."""
    for prefix in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_", "OTEL_EXPORTER_OTLP_"):
        certificate = os.environ.get(f"{prefix}CERTIFICATE", "").strip()
        if certificate:
            return grpc.ssl_channel_credentials(
                root_certificates=_read(certificate),
                private_key=_read(os.environ.get(f"{prefix}CLIENT_KEY", "").strip()),
                certificate_chain=_read(os.environ.get(f"{prefix}CLIENT_CERTIFICATE", "").strip()),
            )
    return grpc.ssl_channel_credentials()


class GrpcSender:
    """One Export call of a request body, on a channel configured as the OTLP/gRPC exporter
    documents it (endpoint, insecure, TLS files, headers, compression)."""

    def __init__(self, signal: str, max_backoff_s: float = 5.0, **overrides: Any) -> None:
        self.signal = signal
        url = str(overrides.get("endpoint") or _env(signal, "ENDPOINT") or DEFAULT_ENDPOINT)
        parsed = urlparse(url)
        self.target = parsed.netloc or url  # "host:port" as given is used as it is
        insecure = overrides.get("insecure")
        if parsed.scheme == "https":
            insecure = False  # the exporter lets an https endpoint win over the variable
        elif insecure is None:
            flag = _env(signal, "INSECURE")
            insecure = flag.lower() == "true" if flag else parsed.scheme == "http"
        self.insecure = bool(insecure)
        headers: Any = overrides.get("headers") or _env(signal, "HEADERS") or ()
        if isinstance(headers, str):
            headers = parse_env_headers(headers, liberal=True)
        if isinstance(headers, dict):
            headers = headers.items()
        self.metadata = tuple((str(k).lower(), str(v)) for k, v in headers)
        wanted = overrides.get("compression") or _env(signal, "COMPRESSION") or "none"
        name = str(getattr(wanted, "name", wanted)).lower()  # a grpc.Compression member too
        self.compression = COMPRESSIONS.get(name, grpc.Compression.NoCompression)
        self._credentials = overrides.get("credentials")
        # gRPC waits up to 2 minutes between reconnection attempts after a long outage;
        # the spool retries on its own schedule, so the channel may not wait longer.
        backoff_ms = max(100, int(max_backoff_s * 1000))
        self.options = (
            ("grpc.primary_user_agent", f"visiontel-spool/{__version__}"),
            ("grpc.initial_reconnect_backoff_ms", min(1000, backoff_ms)),
            ("grpc.max_reconnect_backoff_ms", backoff_ms),
            *tuple(overrides.get("channel_options") or ()),
        )
        self._conn = self._open()

    def _open(self) -> grpc.Channel:
        if self.insecure:
            return grpc.insecure_channel(
                self.target, options=self.options, compression=self.compression
            )
        credentials = self._credentials or _credentials_from_env(self.signal)
        return grpc.secure_channel(
            self.target, credentials, options=self.options, compression=self.compression
        )

    def __call__(self, body: bytes, timeout: float) -> Outcome:
        return send_on(self._conn, self.signal, body, self.metadata, timeout)

    def close(self) -> None:
        self._conn.close()
