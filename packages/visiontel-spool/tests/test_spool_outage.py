"""The endpoint goes away and comes back under the SDK's real batch processors: nothing is
lost, order is kept, the backlog goes first, force_flush drains and shutdown keeps."""

from __future__ import annotations

import logging
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from spool_support import batches, log_bodies, metric_names

from visiontel.spool import SpoolLogExporter, SpoolMetricExporter, SpoolSpanExporter


def _tracing(exporter: SpoolSpanExporter) -> tuple[TracerProvider, BatchSpanProcessor]:
    provider = TracerProvider()
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=20, max_export_batch_size=16)
    provider.add_span_processor(processor)
    return provider, processor


def _spans(provider: TracerProvider, start: int, count: int) -> list[str]:
    tracer = provider.get_tracer("test")
    names = [f"s-{n:06d}" for n in range(start, start + count)]
    for name in names:
        tracer.start_span(name).end()
    return names


def test_outage_then_recovery_loses_nothing_and_keeps_order(receiver, otlp_env):
    exporter = SpoolSpanExporter()
    provider, processor = _tracing(exporter)
    sent = _spans(provider, 0, 50)
    assert receiver.wait_for(lambda: len(receiver.span_names()) == 50)
    assert exporter.stats()["batches"] == 0 and exporter.stats()["link_up"]

    receiver.set("reset")
    sent += _spans(provider, 50, 200)
    processor.force_flush()
    assert receiver.wait_for(lambda: exporter.stats()["batches"] > 0)
    assert len(receiver.span_names()) == 50  # the outage's spans are on disk, not sent
    assert any(otlp_env.joinpath("traces").glob("*.batch"))

    receiver.set("ok")
    sent += _spans(provider, 250, 100)  # new spans queue behind the backlog
    assert exporter.force_flush(20_000)
    processor.force_flush()
    assert receiver.wait_for(lambda: len(receiver.span_names()) == len(sent))
    assert receiver.span_names() == sent  # every span once, in the order they ended
    assert exporter.stats()["batches"] == 0 and exporter.stats()["dropped_items"] == 0
    provider.shutdown()


def test_rejected_batch_is_dropped_counted_and_the_rest_flows(receiver, otlp_env):
    from visiontel.spool import dropped_counts

    exporter = SpoolSpanExporter()
    provider, processor = _tracing(exporter)
    receiver.set("reject")
    _spans(provider, 0, 5)
    processor.force_flush()
    receiver.set("ok")
    names = _spans(provider, 5, 5)
    processor.force_flush()
    assert receiver.wait_for(lambda: receiver.span_names() == names)
    assert dropped_counts() == {("traces", "rejected"): 5}
    provider.shutdown()


def test_force_flush_gives_up_at_its_timeout_and_shutdown_keeps_the_spool(receiver, otlp_env):
    exporter = SpoolSpanExporter()
    provider, processor = _tracing(exporter)
    receiver.set("fail")
    _spans(provider, 0, 40)
    processor.force_flush()
    started = time.monotonic()
    assert exporter.force_flush(300) is False  # 503 throughout
    assert time.monotonic() - started < 2.5  # its own 0.3 s, plus one send in flight
    batches = exporter.stats()["batches"]
    assert batches > 0
    provider.shutdown()
    assert len(list(otlp_env.joinpath("traces").glob("*.batch"))) == batches


def test_shutdown_with_the_endpoint_up_sends_the_backlog_and_the_last_batch(
    receiver, otlp_env, monkeypatch
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "20")  # the bound on shutdown's wait
    receiver.set("reset")
    earlier = SpoolSpanExporter()  # an earlier run, stopped during an outage
    sent = batches(40)
    for batch in sent[:-1]:
        earlier.export(batch)
    started = time.monotonic()
    earlier.shutdown()
    assert time.monotonic() - started < 5  # its sends failed: no wait at shutdown
    assert len(list(otlp_env.joinpath("traces").glob("*.batch"))) == 39

    receiver.set("ok")
    exporter = SpoolSpanExporter()  # the next run: a backlog, so its batch is spooled too
    exporter.export(sent[-1])
    exporter.shutdown()  # at once: only shutdown's own wait gets them all out
    assert receiver.span_names() == [span.name for batch in sent for span in batch]
    assert not list(otlp_env.joinpath("traces").glob("*.batch"))


def test_shutdown_waits_at_most_one_export_timeout_on_a_hanging_endpoint(
    receiver, otlp_env, monkeypatch
):
    receiver.set("reset")
    earlier = SpoolSpanExporter()
    provider, _ = _tracing(earlier)
    _spans(provider, 0, 5)
    provider.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    receiver.set("hang")
    exporter = SpoolSpanExporter()  # its replayer's first send hangs
    started = time.monotonic()
    exporter.shutdown()
    assert time.monotonic() - started < 5  # 1 s timeout + 1 s join, not the 30 s hang
    assert list(otlp_env.joinpath("traces").glob("*.batch"))  # still there for next time


def test_a_shorter_shutdown_timeout_from_the_sdk_bounds_the_wait(receiver, otlp_env, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "20")
    receiver.set("reset")
    reader = PeriodicExportingMetricReader(SpoolMetricExporter(), export_interval_millis=60_000)
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("m").create_counter("c").add(1)
    provider.shutdown()  # the endpoint failed: spooled
    assert list(otlp_env.joinpath("metrics").glob("*.batch"))
    receiver.set("hang")
    exporter = SpoolMetricExporter()  # its replayer's first send hangs (up to 20 s)
    started = time.monotonic()
    exporter.shutdown(timeout_millis=500)
    assert time.monotonic() - started < 4  # 0.5 s, plus the replayer's 1 s join
    assert list(otlp_env.joinpath("metrics").glob("*.batch"))


def test_metrics_through_a_periodic_reader_survive_an_outage(receiver, otlp_env):
    receiver.set("reset")
    exporter = SpoolMetricExporter()
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=50)
    provider = MeterProvider(metric_readers=[reader])
    counter = provider.get_meter("test").create_counter("frames")
    counter.add(3)
    assert receiver.wait_for(lambda: exporter.stats()["batches"] >= 3)
    receiver.set("ok")
    assert exporter.force_flush(20_000)
    metrics = [r for r in receiver.requests if r.path == "/v1/metrics"]
    assert len(metrics) >= 3  # the outage's collections, replayed
    assert all(metric_names(r.body) == ["frames"] for r in metrics)
    provider.shutdown()


def test_logs_through_a_batch_processor_survive_an_outage(receiver, otlp_env):
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    receiver.set("reset")
    exporter = SpoolLogExporter()
    provider = LoggerProvider()
    processor = BatchLogRecordProcessor(exporter, schedule_delay_millis=20)
    provider.add_log_record_processor(processor)
    logger = logging.getLogger("spool-test-app")
    logger.propagate = False
    handler = LoggingHandler(logger_provider=provider)
    logger.addHandler(handler)
    try:
        for n in range(30):
            logger.warning("line %d", n)
        processor.force_flush()
        assert exporter.stats()["batches"] > 0
        receiver.set("ok")
        assert exporter.force_flush(20_000)
    finally:
        logger.removeHandler(handler)
    lines = [line for r in receiver.requests if r.path == "/v1/logs" for line in log_bodies(r.body)]
    assert lines == [f"line {n}" for n in range(30)]
    provider.shutdown()


def test_force_flush_cuts_a_long_backoff_short(receiver, otlp_env, monkeypatch):
    from spool_support import batches

    from visiontel.spool import _core

    monkeypatch.setattr(_core, "FIRST_BACKOFF_S", 30.0)  # one failed replay: 30 s to the next
    receiver.set("reset")
    exporter = SpoolSpanExporter(max_backoff=60.0)
    sent = batches(3)
    for batch in sent:
        exporter.export(batch)
    seen = [-1]

    def quiet() -> bool:  # no new attempt for 0.5 s: the replayer is in its backoff
        now = receiver.attempts
        if now != seen[0]:
            seen[0] = now
            quiet.since = time.monotonic()
        return now > 0 and time.monotonic() - quiet.since > 0.5

    quiet.since = time.monotonic()
    assert receiver.wait_for(quiet, timeout=30)
    receiver.set("ok")
    started = time.monotonic()
    assert exporter.force_flush(10_000)
    assert time.monotonic() - started < 5.0  # not the 30 s backoff
    assert receiver.span_names() == [s.name for b in sent for s in b]
    exporter.shutdown()
