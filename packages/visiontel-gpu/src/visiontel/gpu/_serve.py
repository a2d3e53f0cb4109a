"""`visiontel-gpu serve`: a standalone GPU exporter for nodes and sidecars.

OTLP settings are the standard ones (visiontel._support.otlp: the per-signal protocol wins
over the general one; the exporters read OTEL_EXPORTER_OTLP_[METRICS_|LOGS_]ENDPOINT,
_HEADERS, _CERTIFICATE... themselves; OTEL_METRIC_EXPORT_INTERVAL, OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES);
OTEL_METRICS_EXPORTER / OTEL_LOGS_EXPORTER = otlp (default) or none choose whether to push.
A Prometheus scrape endpoint is opened when a port is given (0: any free port); the startup
line on stderr names the address it bound. SIGTERM or SIGINT flushes and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from visiontel._support.env import check_float, env_choice, env_list, env_parsed, env_str
from visiontel._support.otlp import otlp_log_exporter, otlp_metric_exporter
from visiontel.gpu._backend import BackendUnavailable, open_backend, resource_attributes
from visiontel.gpu._config import BACKENDS, MIN_INTERVAL_S, GPUConfig
from visiontel.gpu._events import EventWatcher
from visiontel.gpu._instruments import register
from visiontel.gpu._sampler import Sampler
from visiontel.gpu.version import __version__

_log = logging.getLogger("visiontel.gpu")


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_PORTS = "a port number (0-65535; 0 picks a free one) or off"


def _port_value(raw: str) -> int | None:
    """A port, None (off) for "off" or nothing; 0 lets the OS pick the port."""
    value = raw.strip().lower()
    if value in ("", "off"):
        return None
    if value.isdigit() and int(value) <= 65535:
        return int(value)
    raise ValueError(raw)


def _port(raw: str) -> int | None:
    """--prometheus-port (see _port_value)."""
    try:
        return _port_value(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not {_PORTS}") from None


def _interval(raw: str) -> float:
    """--interval: seconds, at least MIN_INTERVAL_S (the rule GPUConfig applies)."""
    try:
        return check_float("--interval", float(raw), minimum=MIN_INTERVAL_S)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not a number of seconds >= {MIN_INTERVAL_S}"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visiontel-gpu", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="export GPU metrics and events until SIGTERM")
    serve.add_argument(
        "--interval", type=_interval, help=f"seconds between sweeps (>= {MIN_INTERVAL_S})"
    )
    serve.add_argument(
        "--backend",
        choices=BACKENDS,
        help="auto (the default): DCGM, else NVML, else a Jetson's sysfs; or force one",
    )
    serve.add_argument("--nvml-library", help="path of libnvidia-ml.so.1")
    serve.add_argument(
        "--prometheus-port",
        type=_port,
        default=env_parsed("VISIONTEL_GPU_PROMETHEUS_PORT", None, _port_value, _PORTS),
        help="serve /metrics for Prometheus on this port (0: any free port, printed at "
        "startup; off: no endpoint, the default)",
    )
    serve.add_argument(
        "--prometheus-host",
        default=env_str("VISIONTEL_GPU_PROMETHEUS_HOST", "127.0.0.1"),
        help="address the Prometheus endpoint binds (0.0.0.0 to be scraped from outside)",
    )
    serve.add_argument("--no-processes", action="store_true", help="no per-process series")
    serve.add_argument("--no-events", action="store_true", help="no XID log records")
    return parser


def _wants_otlp(variable: str) -> bool:
    return "otlp" in [name.lower() for name in env_list(variable, ["otlp"])]


def serve(args: argparse.Namespace) -> int:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    config = GPUConfig.resolve(
        backend=args.backend,
        nvml_library=args.nvml_library,
        interval=args.interval,
        processes=False if args.no_processes else None,
        events=False if args.no_events else None,
    )
    try:
        backend = open_backend(config)
    except BackendUnavailable as exc:
        print(f"visiontel-gpu: cannot collect GPU metrics: {exc}", file=sys.stderr)
        return 2
    service: dict[str, Any] = {}
    if "OTEL_SERVICE_NAME" not in os.environ:
        service[SERVICE_NAME] = "visiontel-gpu"
    resource = Resource(dict(resource_attributes(backend))).merge(Resource.create(service))

    readers: list[MetricReader] = []
    if _wants_otlp("OTEL_METRICS_EXPORTER"):
        readers.append(PeriodicExportingMetricReader(otlp_metric_exporter()))
    server = None
    scrape_url = ""
    if args.prometheus_port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        readers.append(PrometheusMetricReader())
        started = start_http_server(args.prometheus_port, args.prometheus_host)
        server = started[0] if isinstance(started, tuple) else None
        # With port 0 only the server knows the port; the startup line is how a caller
        # (a test, a sidecar's wrapper) learns it.
        port = server.server_address[1] if server is not None else args.prometheus_port
        host = args.prometheus_host
        scrape_url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    sampler = Sampler(
        backend, config.interval, proc_root=config.proc_root if config.processes else None
    )
    register(meter_provider.get_meter("visiontel.gpu", __version__), sampler)
    sampler.start()

    logger_provider = None
    events = None
    if config.events and _wants_otlp("OTEL_LOGS_EXPORTER") and hasattr(backend, "nvml"):
        logger_provider = LoggerProvider(resource=resource)
        logger_provider.add_log_record_processor(BatchLogRecordProcessor(otlp_log_exporter()))
        events = EventWatcher(backend, logger_provider.get_logger("visiontel.gpu", __version__))  # type: ignore[arg-type]
        if not events.start():
            events = None

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        _log.info("visiontel-gpu: %s received, flushing and exiting", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"visiontel-gpu serve: {backend.name}, {len(backend.devices)} device(s), "
        f"sweep every {config.interval}s" + (f", Prometheus on {scrape_url}" if scrape_url else ""),
        file=sys.stderr,
        flush=True,
    )
    while not stop.wait(1.0):
        pass
    if events is not None:
        events.stop()
    sampler.sweep_once()  # the final export carries current values
    meter_provider.shutdown()
    sampler.stop()
    if logger_provider is not None:
        logger_provider.shutdown()
    if server is not None:
        server.shutdown()
    backend.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=env_choice("VISIONTEL_GPU_LOG_LEVEL", "INFO", _LOG_LEVELS))
    args = _parser().parse_args(argv)
    if args.command == "serve":
        try:
            return serve(args)
        except ImportError as exc:
            print(
                f"visiontel-gpu serve needs its exporters ({exc.name or exc} is missing): "
                "pip install 'visiontel-gpu[serve]'",
                file=sys.stderr,
            )
            return 2
        except RuntimeError as exc:  # the OTLP set-up: an exporter package is missing
            print(f"visiontel-gpu serve: {exc}", file=sys.stderr)
            return 2
    return 2  # pragma: no cover - argparse rejects unknown commands
