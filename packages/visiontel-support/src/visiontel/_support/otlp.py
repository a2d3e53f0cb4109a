"""One OTLP exporter set-up for the three signals (needs the ``otlp`` extra).

The protocol is chosen per signal: ``OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL``, else
``OTEL_EXPORTER_OTLP_PROTOCOL``, else ``http/protobuf``. Everything else (endpoint, headers,
timeout, compression, certificates, insecure, general and per-signal) is left to the upstream
exporter, which reads those variables itself; an explicit ``endpoint`` argument is the only
thing passed in, because upstream treats an explicit endpoint differently per protocol (the
HTTP exporter uses it verbatim, without ``/v1/<signal>``; the gRPC one keeps host:port).

The SDK and the exporters are imported when an exporter is built, never at import: the
distribution's base install is ``opentelemetry-api`` only.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from visiontel._support.env import env_choice

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["otlp_log_exporter", "otlp_metric_exporter", "otlp_protocol", "otlp_span_exporter"]

Signal = Literal["traces", "metrics", "logs"]
SIGNALS: tuple[Signal, ...] = ("traces", "metrics", "logs")
DEFAULT_PROTOCOL = "http/protobuf"

# (module, class) of the upstream exporter for each protocol and signal.
_EXPORTERS: dict[str, dict[str, tuple[str, str]]] = {
    "http/protobuf": {
        "traces": ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter"),
        "metrics": ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter"),
        "logs": ("opentelemetry.exporter.otlp.proto.http._log_exporter", "OTLPLogExporter"),
    },
    "grpc": {
        "traces": ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
        "metrics": ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
        "logs": ("opentelemetry.exporter.otlp.proto.grpc._log_exporter", "OTLPLogExporter"),
    },
    "http/json": {
        "traces": ("opentelemetry.exporter.otlp.json.http.trace_exporter", "OTLPSpanExporter"),
        "metrics": ("opentelemetry.exporter.otlp.json.http.metric_exporter", "OTLPMetricExporter"),
        "logs": ("opentelemetry.exporter.otlp.json.http._log_exporter", "OTLPLogExporter"),
    },
}
_DISTRIBUTIONS = {
    "http/protobuf": "opentelemetry-exporter-otlp-proto-http",
    "grpc": "opentelemetry-exporter-otlp-proto-grpc",
    "http/json": "opentelemetry-exporter-otlp-json-http",
}


def _json_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.json.http") is not None
    except (ImportError, ValueError):
        return False


def _accepted() -> tuple[str, ...]:
    # http/json is a valid OTLP protocol, but offering it without an exporter would only
    # move the failure to the first export; unaccepted, the default (protobuf, which every
    # OTLP/HTTP receiver also takes) is used and the warning says what to install.
    if _json_installed():
        return ("http/protobuf", "grpc", "http/json")
    return ("http/protobuf", "grpc")


def _check_signal(signal: object) -> Signal:
    for known in SIGNALS:
        if signal == known:
            return known
    raise ValueError(f"signal must be one of {', '.join(SIGNALS)}; got {signal!r}")


def otlp_protocol(signal: Signal) -> str:
    """The protocol for ``signal``: its own variable, else the general one, else
    ``http/protobuf``. A malformed value is logged once and the next in line is used."""
    known = _check_signal(signal)
    accepted = _accepted()
    general = env_choice("OTEL_EXPORTER_OTLP_PROTOCOL", DEFAULT_PROTOCOL, accepted)
    return env_choice(f"OTEL_EXPORTER_OTLP_{known.upper()}_PROTOCOL", general, accepted)


def _explicit_endpoint(endpoint: str, protocol: str, signal: Signal) -> str:
    parts = urlsplit(endpoint.strip()) if isinstance(endpoint, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"endpoint must be a base URL such as http://collector:4318 (http or https, "
            f"with a host); got {endpoint!r}"
        )
    if protocol == "grpc":
        # The gRPC exporter keeps host:port and takes TLS from the scheme (http: insecure)
        # unless OTEL_EXPORTER_OTLP[_<SIGNAL>]_INSECURE says otherwise; a path means nothing.
        return f"{parts.scheme}://{parts.netloc}"
    # The HTTP exporters post to an explicit endpoint as given: the signal's path is ours
    # to add (the environment variable OTEL_EXPORTER_OTLP_ENDPOINT gets it from upstream).
    base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return f"{base}/v1/{signal}"


def _build(signal: Signal, endpoint: str | None, kwargs: dict[str, Any]) -> Any:
    protocol = otlp_protocol(signal)
    module_name, class_name = _EXPORTERS[protocol][signal]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeError(
            f"OTLP over {protocol} needs the exporter package: pip install "
            f"{_DISTRIBUTIONS[protocol]} (or set OTEL_EXPORTER_OTLP_PROTOCOL to a protocol "
            f"whose exporter is installed); import failed: {exc}"
        ) from exc
    if endpoint is not None:
        kwargs = {**kwargs, "endpoint": _explicit_endpoint(endpoint, protocol, signal)}
    return getattr(module, class_name)(**kwargs)


def otlp_span_exporter(*, endpoint: str | None = None) -> SpanExporter:
    """The OTLP span exporter the environment asks for."""
    exporter: SpanExporter = _build("traces", endpoint, {})
    return exporter


def otlp_metric_exporter(*, endpoint: str | None = None, **kwargs: Any) -> MetricExporter:
    """The OTLP metric exporter the environment asks for; ``kwargs`` (such as
    ``preferred_temporality`` or ``preferred_aggregation``) go to the exporter."""
    exporter: MetricExporter = _build("metrics", endpoint, dict(kwargs))
    return exporter


def otlp_log_exporter(*, endpoint: str | None = None) -> LogRecordExporter:
    """The OTLP log record exporter the environment asks for."""
    exporter: LogRecordExporter = _build("logs", endpoint, {})
    return exporter
