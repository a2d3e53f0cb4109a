"""Zero-code: OTEL_*_EXPORTER=visiontel_spool, loaded by the SDK through its entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from opentelemetry.util._importlib_metadata import entry_points
from spool_support import log_bodies, metric_names, span_names

from visiontel.spool import SpoolLogExporter, SpoolMetricExporter, SpoolSpanExporter


def test_entry_points_name_the_three_exporters():
    for group, cls in (
        ("opentelemetry_traces_exporter", SpoolSpanExporter),
        ("opentelemetry_metrics_exporter", SpoolMetricExporter),
        ("opentelemetry_logs_exporter", SpoolLogExporter),
    ):
        (point,) = entry_points(group=group, name="visiontel_spool")
        assert point.load() is cls


def test_the_sdk_configurator_loads_them_by_name():
    from opentelemetry.sdk._configuration import _import_exporters

    traces, metrics, logs = _import_exporters(
        ["visiontel_spool"], ["visiontel_spool"], ["visiontel_spool"]
    )
    assert traces == {"visiontel_spool": SpoolSpanExporter}
    assert metrics == {"visiontel_spool": SpoolMetricExporter}
    assert logs == {"visiontel_spool": SpoolLogExporter}


APP = textwrap.dedent(
    """
    import logging
    from opentelemetry import metrics, trace
    from opentelemetry._logs import get_logger_provider
    from opentelemetry.sdk._configuration import _OTelSDKConfigurator
    from opentelemetry.sdk._logs import LoggingHandler

    _OTelSDKConfigurator().configure()  # what opentelemetry-instrument does at start-up
    for n in range(5):
        with trace.get_tracer("app").start_as_current_span(f"frame {n}"):
            pass
    metrics.get_meter("app").create_counter("frames").add(5)
    log = logging.getLogger("app")
    log.addHandler(LoggingHandler(logger_provider=get_logger_provider()))
    log.warning("camera lost")
    trace.get_tracer_provider().shutdown()
    metrics.get_meter_provider().shutdown()
    get_logger_provider().shutdown()
    """
)


def test_zero_code_application_exports_all_three_signals_through_an_outage(receiver, otlp_env):
    receiver.set("reset")
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "visiontel_spool",
        "OTEL_METRICS_EXPORTER": "visiontel_spool",
        "OTEL_LOGS_EXPORTER": "visiontel_spool",
        "OTEL_SERVICE_NAME": "zero-code-app",
    }
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", APP],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for signal in ("traces", "metrics", "logs"):  # the endpoint was down: all on disk
        assert list((otlp_env / signal).glob("*.batch")), signal
    assert receiver.requests == []

    receiver.set("ok")
    done = subprocess.run(  # the same application, started again with the endpoint up
        [sys.executable, "-W", "ignore", "-c", APP],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    by_path: dict[str, list[bytes]] = {}
    for request in receiver.requests:
        by_path.setdefault(request.path, []).append(request.body)
    spans = [n for body in by_path["/v1/traces"] for n in span_names(body)]
    assert spans == [f"frame {n}" for n in range(5)] * 2  # the first run's first
    assert [n for b in by_path["/v1/metrics"] for n in metric_names(b)].count("frames") >= 2
    assert [n for b in by_path["/v1/logs"] for n in log_bodies(b)] == ["camera lost"] * 2
