"""The three exporters the SDK loads by name (``visiontel_spool``), one per signal.

Each wraps the standard OTLP exporter of its signal for the protocol asked for (HTTP, or
gRPC with ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``), built with the same keyword arguments and
so reading the same ``OTEL_EXPORTER_OTLP_*`` variables, and puts a ``SpoolCore`` in front
of it. Where the spool cannot be had (another process owns the directory, it cannot be
created) a batch goes to the wrapped exporter as if the spool were not there.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from visiontel._support.otlp import otlp_protocol
from visiontel.spool import _diag, _otel_private
from visiontel.spool._core import SpoolCore
from visiontel.spool._http import PublicSender, Sender, timeout_s


class _Spooled:
    """What the three exporters share: settings, the wrapped exporter, the core."""

    signal = ""

    def _setup(
        self,
        make_http: Callable[..., Any],
        make_grpc: Callable[..., Any],
        *,
        directory: str | Path | None,
        max_bytes: int | None,
        max_backoff: float | None,
        otlp: dict[str, Any],
    ) -> None:
        self.directory = _diag.directory_setting(directory) / self.signal
        max_bytes = _diag.max_bytes_setting(max_bytes)
        backoff = _diag.max_backoff_setting(max_backoff)
        self._core: SpoolCore | None = None
        self._inner: Any = None
        wanted = otlp_protocol(self.signal)  # type: ignore[arg-type]
        if wanted == "grpc":
            try:
                self._inner = make_grpc(**otlp)
            except ImportError:
                _diag.log_once(
                    f"nogrpc:{self.signal}",
                    "visiontel.spool: OTEL_EXPORTER_OTLP_PROTOCOL=grpc but "
                    "opentelemetry-exporter-otlp-proto-grpc is not installed (pip install "
                    "'visiontel-spool[grpc]'): %s are not exported",
                    self.signal,
                    level=logging.ERROR,
                )
                return
            from visiontel.spool._grpc import GrpcSender  # grpcio: there with the exporter

            send: Sender = _otel_private.private_grpc_sender(
                self._inner, self.signal
            ) or GrpcSender(self.signal, backoff, **otlp)
        else:
            if wanted != "http/protobuf":
                _diag.log_once(
                    f"protocol:{self.signal}",
                    "visiontel.spool: OTLP protocol %r is not supported; using http/protobuf",
                    wanted,
                )
            self._inner = make_http(**otlp)
            send = _otel_private.private_sender(self._inner) or PublicSender(self.signal, **otlp)
        self._sender = send
        self._core = SpoolCore(
            self.signal,
            send,
            directory=self.directory,
            max_bytes=max_bytes,
            timeout_s=timeout_s(self.signal, otlp.get("timeout")),
            max_backoff_s=backoff,
        )

    def _spool(self, batch: Any, encode: Callable[[Any], bytes], items: int) -> bool | None:
        """True/False: spooled or sent / lost; None: no spool here, use the wrapped one."""
        core = self._core
        if core is None or not core.has_spool():
            return None
        try:
            body = encode(batch)
        except Exception as error:  # a batch the encoder cannot take: the SDK's own case
            _diag.errors.report(
                f"encoding a {self.signal} batch", error, message="the batch is lost"
            )
            return False
        return core.export(body, items)

    def stats(self) -> dict[str, Any]:
        """What is spooled now, and the most it held (bytes), for tests and diagnostics."""
        spool = self._core.spool if self._core is not None else None
        return {
            "directory": str(self.directory),
            "owned": spool is not None,
            "batches": len(spool) if spool is not None else 0,
            "bytes": spool.bytes if spool is not None else 0,
            "peak_bytes": spool.peak_bytes if spool is not None else 0,
            "dropped_items": spool.tally.full_items if spool is not None else 0,
            "dropped_batches": spool.tally.full_batches if spool is not None else 0,
            "corrupt_batches": spool.tally.corrupt_batches if spool is not None else 0,
            "link_up": self._core.link_up if self._core is not None else None,
        }

    def _flush(self, timeout_millis: float) -> bool:
        drained = self._core.force_flush(timeout_millis / 1000) if self._core else True
        return drained and bool(self._inner is None or self._inner.force_flush(timeout_millis))

    def _close(self, timeout_s: float | None = None) -> None:
        if self._core is not None:
            self._core.shutdown(timeout_s)
        close = getattr(getattr(self, "_sender", None), "close", None)
        if callable(close):
            close()
        if self._inner is not None:
            self._inner.shutdown()


def _points(data: MetricsData) -> int:
    return sum(
        len(metric.data.data_points)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    )


def _metric_preferences_from_env() -> tuple[dict[type, Any], dict[type, Any]]:
    """The OTLP exporter's documented preferences, read from the environment as its
    specification says (the public way, when the gate is shut)."""
    from opentelemetry.sdk import metrics as sdk_metrics
    from opentelemetry.sdk.metrics.export import AggregationTemporality
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation

    cumulative, delta = AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA
    kinds = (  # Gauge: newer SDKs only
        "Counter",
        "UpDownCounter",
        "Histogram",
        "ObservableCounter",
        "ObservableUpDownCounter",
        "ObservableGauge",
        "Gauge",
    )
    instruments = {name: getattr(sdk_metrics, name) for name in kinds if hasattr(sdk_metrics, name)}
    wanted = os.environ.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "")
    as_delta = {
        "delta": {"Counter", "Histogram", "ObservableCounter"},
        "lowmemory": {"Counter", "Histogram"},
    }.get(wanted.strip().lower(), set())
    temporality = {
        kind: delta if name in as_delta else cumulative for name, kind in instruments.items()
    }
    aggregation: dict[type, Any] = {}
    histogram = os.environ.get("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION", "")
    if histogram.strip().lower() == "base2_exponential_bucket_histogram":
        aggregation[instruments["Histogram"]] = ExponentialBucketHistogramAggregation()
    return temporality, aggregation


def _http(module: str, name: str) -> Callable[..., Any]:
    def make(**kwargs: Any) -> Any:
        exporter_module = importlib.import_module(module)
        return getattr(exporter_module, name)(**kwargs)

    return make


_HTTP = "opentelemetry.exporter.otlp.proto.http"
_GRPC = "opentelemetry.exporter.otlp.proto.grpc"


class SpoolSpanExporter(SpanExporter, _Spooled):
    """OTLP/HTTP span exporter that keeps batches on disk while the endpoint is away."""

    signal = "traces"

    def __init__(
        self,
        directory: str | Path | None = None,
        max_bytes: int | None = None,
        max_backoff: float | None = None,
        **otlp: Any,
    ) -> None:
        self._setup(
            _http(f"{_HTTP}.trace_exporter", "OTLPSpanExporter"),
            _http(f"{_GRPC}.trace_exporter", "OTLPSpanExporter"),
            directory=directory,
            max_bytes=max_bytes,
            max_backoff=max_backoff,
            otlp=otlp,
        )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        done = self._spool(spans, lambda b: encode_spans(b).SerializePartialToString(), len(spans))
        if done is None:
            return self._inner.export(spans) if self._inner else SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if done else SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._flush(timeout_millis)

    def shutdown(self) -> None:
        self._close()


class SpoolMetricExporter(MetricExporter, _Spooled):
    """OTLP/HTTP metric exporter that keeps batches on disk while the endpoint is away."""

    signal = "metrics"

    def __init__(
        self,
        directory: str | Path | None = None,
        max_bytes: int | None = None,
        max_backoff: float | None = None,
        **otlp: Any,
    ) -> None:
        self._setup(
            _http(f"{_HTTP}.metric_exporter", "OTLPMetricExporter"),
            _http(f"{_GRPC}.metric_exporter", "OTLPMetricExporter"),
            directory=directory,
            max_bytes=max_bytes,
            max_backoff=max_backoff,
            otlp=otlp,
        )
        temporality, aggregation = _otel_private.metric_preferences(self._inner)
        if temporality is None:
            temporality, aggregation = _metric_preferences_from_env()
        super().__init__(preferred_temporality=temporality, preferred_aggregation=aggregation)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        encode = lambda d: encode_metrics(d).SerializePartialToString()  # noqa: E731
        done = self._spool(metrics_data, encode, _points(metrics_data))
        if done is None:
            if self._inner is None:
                return MetricExportResult.FAILURE
            return self._inner.export(metrics_data, timeout_millis=timeout_millis)  # type: ignore[no-any-return]
        return MetricExportResult.SUCCESS if done else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._close(timeout_millis / 1000)


_LOGS = _otel_private.log_classes()
_LogBase: Any = _LOGS[0] if _LOGS else object
_LogResult: Any = _LOGS[1] if _LOGS else None


class SpoolLogExporter(_LogBase, _Spooled):  # type: ignore[misc]
    """OTLP/HTTP log exporter that keeps batches on disk while the endpoint is away."""

    signal = "logs"

    def __init__(
        self,
        directory: str | Path | None = None,
        max_bytes: int | None = None,
        max_backoff: float | None = None,
        **otlp: Any,
    ) -> None:
        if _LogResult is None:
            raise RuntimeError("the installed opentelemetry-sdk has no logs SDK")
        self._setup(
            _otel_private.http_log_exporter,
            _otel_private.grpc_log_exporter,
            directory=directory,
            max_bytes=max_bytes,
            max_backoff=max_backoff,
            otlp=otlp,
        )

    def export(self, batch: Sequence[Any]) -> Any:
        done = self._spool(batch, _otel_private.encode_logs, len(batch))
        if done is None:
            return self._inner.export(batch) if self._inner else _LogResult.FAILURE
        return _LogResult.SUCCESS if done else _LogResult.FAILURE

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._flush(timeout_millis)

    def shutdown(self) -> None:
        self._close()
