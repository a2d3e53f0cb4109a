"""Sending one serialized OTLP/HTTP request body, once, without the exporter's retry loop.

``Outcome`` is what the replayer acts on. ``PublicSender`` is the public-API way: the
request built from the OTLP exporter's documented environment variables (per-signal first,
then the general one, then the default), sent with ``requests``. ``_otel_private`` offers
the exporter's own sending code in its place where the gate admits it.
"""

from __future__ import annotations

import enum
import gzip
import os
import zlib
from collections.abc import Callable
from typing import Any

import requests
from opentelemetry.util.re import parse_env_headers

from visiontel._support.env import env_float
from visiontel.spool.version import __version__


class Outcome(enum.Enum):
    SENT = "sent"
    RETRY = "retry"  # no answer, or one that says "later": keep the batch
    REJECTED = "rejected"  # an answer that will not change: drop the batch (OTLP spec)


Sender = Callable[[bytes, float], Outcome]
PATHS = {"traces": "v1/traces", "metrics": "v1/metrics", "logs": "v1/logs"}
DEFAULT_ENDPOINT = "http://localhost:4318"
DEFAULT_TIMEOUT_S = 10.0


def outcome_of(status: int | None) -> Outcome:
    """2xx/3xx sent; no status (connection refused, reset, timed out), 408, 429 and 5xx are
    worth retrying; any other 4xx never will be."""
    if status is None:
        return Outcome.RETRY
    if 200 <= status < 400:
        return Outcome.SENT
    if status in (408, 429) or status >= 500:
        return Outcome.RETRY
    return Outcome.REJECTED


def _env(signal: str, name: str) -> str | None:
    """OTEL_EXPORTER_OTLP_<SIGNAL>_<NAME>, else OTEL_EXPORTER_OTLP_<NAME> (empty = unset).

    Only strings the exporter also uses verbatim (endpoint, headers, compression, files,
    insecure) are read here: numbers go through visiontel._support.env."""
    for key in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        value = os.environ.get(key, "").strip()
        if value:
            return value
    return None


def timeout_s(signal: str, value: float | None = None) -> float:
    """The per-signal timeout variable, else the general one, else 10 s (seconds, as the
    Python exporters read them); a malformed one is logged once and the next in line used."""
    if value is not None:
        return float(value)
    general = env_float("OTEL_EXPORTER_OTLP_TIMEOUT", DEFAULT_TIMEOUT_S, minimum=0.0)
    return env_float(f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT", general, minimum=0.0)


class PublicSender:
    """One POST of a request body, configured as the OTLP/HTTP exporter documents it."""

    def __init__(self, signal: str, **overrides: Any) -> None:
        specific = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
        if overrides.get("endpoint"):
            endpoint = str(overrides["endpoint"])
        elif specific:
            endpoint = specific  # used as given: it already names the signal's path
        else:
            base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or DEFAULT_ENDPOINT
            endpoint = f"{base.rstrip('/')}/{PATHS[signal]}"
        self.endpoint: str = endpoint
        headers = {
            k.lower(): v
            for k, v in parse_env_headers(_env(signal, "HEADERS") or "", liberal=True).items()
        }
        headers.update({k.lower(): v for k, v in (overrides.get("headers") or {}).items()})
        headers["content-type"] = "application/x-protobuf"
        headers.setdefault("user-agent", f"visiontel-spool/{__version__}")
        compression = str(overrides.get("compression") or _env(signal, "COMPRESSION") or "none")
        self.compression = compression.lower().rsplit(".", 1)[-1]  # an enum member's name too
        if self.compression in ("gzip", "deflate"):
            headers["content-encoding"] = self.compression
        self.headers = headers
        self.verify: bool | str = (
            overrides.get("certificate_file") or _env(signal, "CERTIFICATE") or True
        )
        cert_file = overrides.get("client_certificate_file") or _env(signal, "CLIENT_CERTIFICATE")
        key_file = overrides.get("client_key_file") or _env(signal, "CLIENT_KEY")
        self.cert: tuple[str, str] | str | None = (
            (cert_file, key_file) if cert_file and key_file else cert_file
        )
        self._session = requests.Session()

    def _deflated(self, body: bytes) -> bytes:
        if self.compression == "gzip":
            return gzip.compress(body)
        if self.compression == "deflate":
            return zlib.compress(body)
        return body

    def __call__(self, body: bytes, timeout: float) -> Outcome:
        try:
            response = self._session.post(
                self.endpoint,
                data=self._deflated(body),
                headers=self.headers,
                timeout=max(timeout, 0.001),
                verify=self.verify,
                cert=self.cert,
            )
        except requests.RequestException:
            return Outcome.RETRY
        return outcome_of(response.status_code)

    def close(self) -> None:
        self._session.close()
