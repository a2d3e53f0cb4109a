"""An instrumented application for the secrets test: torch inference, frame propagation and
GPU metrics (on the NVML simulator when NVML_SIM_SCRIPT is set), exporting traces, metrics
and logs over OTLP/HTTP as configured by the standard OTEL_* variables, with every span also
printed (ConsoleSpanExporter) and every log line at DEBUG on stderr.

    python tests/reliability/leaky_app.py FORWARDS

The test points OTLP at a receiver that refuses the API key, then greps all of this
process's output for the key.
"""

from __future__ import annotations

import logging
import sys

import torch
from opentelemetry import metrics, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)

import visiontel.propagation as vp
import visiontel.torch as vt


def main(forwards: int) -> int:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=500)
    meter_provider = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(meter_provider)
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    set_logger_provider(logger_provider)
    logging.getLogger().addHandler(LoggingHandler(logger_provider=logger_provider))

    gpu = None
    try:
        from visiontel.gpu import GPUInstrumentor

        gpu = GPUInstrumentor()
        gpu.instrument(interval=0.1)
    except Exception as exc:  # the test reads the output; it must not stop here
        print(f"gpu instrumentation unavailable: {exc}", file=sys.stderr)

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    vt.instrument_model(model, name="leaky")
    with torch.inference_mode():
        for i in range(forwards):
            with vp.start_frame("capture", vp.FrameIdentity.now("cam-1", i)):
                carrier: dict[str, str] = {}
                vp.inject_dict(carrier)
                with vp.continue_frame("detect", vp.extract_dict(carrier)):
                    model(torch.rand(1, 3, 16, 16))
            logging.getLogger("leaky").info("frame %d done", i)
    vt.flush()
    if gpu is not None:
        gpu.refresh()
    # Shutdown flushes: every exporter now meets the refusing receiver at least once.
    tracer_provider.shutdown()
    meter_provider.shutdown()
    logger_provider.shutdown()
    if gpu is not None:
        gpu.uninstrument()
    print("leaky app done", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
