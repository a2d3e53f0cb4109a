"""OTEL_EXPORTER_OTLP_PROTOCOL=grpc: the same spool, sent as unary Export calls to a real
gRPC receiver; the status codes the OTLP specification calls retryable keep a batch, the
others drop it; a spool written over one protocol replays over the other."""

from __future__ import annotations

import logging
import time
from importlib import metadata
from typing import Any

import grpc
import pytest
from spool_grpc_support import GrpcReceiver
from spool_support import batches, log_bodies, metric_names, span_names

from visiontel.spool import (
    SpoolLogExporter,
    SpoolMetricExporter,
    SpoolSpanExporter,
    _otel_private,
    dropped_counts,
)
from visiontel.spool._grpc import GrpcSender, outcome_of_error
from visiontel.spool._http import Outcome

EXPORTERS = {"traces": SpoolSpanExporter, "metrics": SpoolMetricExporter, "logs": SpoolLogExporter}
LABELS = {"traces": span_names, "metrics": metric_names, "logs": log_bodies}


def _metric_batches(count: int) -> list[tuple[Any, list[str]]]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    out = []
    for n in range(count):  # one provider per batch: each collection names one metric
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        provider.get_meter("test").create_counter(f"frames-{n}").add(n + 1)
        out.append((reader.get_metrics_data(), [f"frames-{n}"]))
        provider.shutdown()
    return out


def _log_batches(count: int) -> list[tuple[Any, list[str]]]:
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler, export

    # InMemoryLogRecordExporter from 1.39 on; InMemoryLogExporter, deprecated there, before
    memory = getattr(export, "InMemoryLogRecordExporter", export.InMemoryLogExporter)()
    provider = LoggerProvider()
    provider.add_log_record_processor(export.SimpleLogRecordProcessor(memory))
    logger = logging.getLogger("spool-grpc-test")
    logger.propagate = False
    handler = LoggingHandler(logger_provider=provider)
    logger.addHandler(handler)
    out = []
    try:
        for n in range(count):
            lines = [f"line {n}-{i}" for i in range(3)]
            for line in lines:
                logger.warning(line)
            out.append((list(memory.get_finished_logs()), lines))
            memory.clear()
    finally:
        logger.removeHandler(handler)
    return out


def make_batches(signal: str, count: int) -> list[tuple[Any, list[str]]]:
    if signal == "traces":
        return [(b, [s.name for s in b]) for b in batches(count, per_batch=4, pad=50)]
    return _metric_batches(count) if signal == "metrics" else _log_batches(count)


def received(receiver: GrpcReceiver, signal: str) -> list[str]:
    return [label for body in receiver.bodies(signal) for label in LABELS[signal](body)]


@pytest.mark.parametrize("signal", ["traces", "metrics", "logs"])
def test_outage_spools_then_replays_in_order(grpc_receiver, grpc_env, signal):
    grpc_receiver.set("unavailable")
    exporter = EXPORTERS[signal]()
    assert type(exporter._inner).__module__.startswith("opentelemetry.exporter.otlp.proto.grpc")
    *sent, (later, labels) = make_batches(signal, 7)
    for batch, _ in sent:
        assert exporter.export(batch).name == "SUCCESS"
    assert exporter.stats()["batches"] == 6
    assert len(list((grpc_env / signal).glob("*.batch"))) == 6
    assert grpc_receiver.calls == [] and grpc_receiver.attempts >= 1
    grpc_receiver.set("ok")
    assert exporter.force_flush(30_000)
    assert received(grpc_receiver, signal) == [label for _, labels in sent for label in labels]
    exporter.export(later)  # link up again, nothing spooled: sent at once
    assert received(grpc_receiver, signal)[-len(labels) :] == labels
    assert exporter.stats()["batches"] == 0
    exporter.shutdown()


@pytest.mark.parametrize("gate", ["exporter's channel", "own channel"])
def test_a_receiver_that_was_down_gets_the_backlog_when_it_comes_back(grpc_env, monkeypatch, gate):
    import os
    import shutil
    import tempfile

    from spool_grpc_support import start_grpc_receiver, stop_grpc_receiver

    _otel_private._force(None if gate == "exporter's channel" else False)
    socket = f"{tempfile.mkdtemp(prefix='vt-', dir='/tmp')}/otlp.sock"  # short: a socket path
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"unix://{socket}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    exporter = SpoolSpanExporter()  # nothing listens: every call fails to connect
    sent = batches(4, per_batch=3)
    for batch in sent[:2]:
        exporter.export(batch)
    time.sleep(2.0)  # the replayer fails a few times: the channel is in its reconnect backoff
    for batch in sent[2:]:
        exporter.export(batch)
    assert exporter.stats()["batches"] == 4
    receiver = start_grpc_receiver(f"unix:{socket}")
    try:
        started = time.monotonic()
        assert exporter.force_flush(30_000)
        assert receiver.span_names() == [s.name for b in sent for s in b]
        assert time.monotonic() - started < 10.0  # the spool's backoff, not gRPC's
    finally:
        exporter.shutdown()
        stop_grpc_receiver(receiver)
        shutil.rmtree(os.path.dirname(socket), ignore_errors=True)


def test_a_restart_replays_and_a_spool_written_over_http_replays_over_grpc(
    receiver, grpc_receiver, otlp_env, monkeypatch
):
    sent = batches(6, per_batch=3, pad=10)
    receiver.set("reset")  # OTLP/HTTP, endpoint down: 3 batches spooled
    http = SpoolSpanExporter()
    for batch in sent[:3]:
        http.export(batch)
    http.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", grpc_receiver.endpoint)
    grpc_receiver.set("unavailable")  # restarted over gRPC, still down: 3 more
    first = SpoolSpanExporter()
    for batch in sent[3:]:
        first.export(batch)
    first.shutdown()
    assert len(list((otlp_env / "traces").glob("*.batch"))) == 6
    grpc_receiver.set("ok")
    second = SpoolSpanExporter()  # the next start, endpoint up: older batches first
    assert second.force_flush(30_000)
    assert grpc_receiver.span_names() == [s.name for b in sent for s in b]
    assert receiver.requests == []
    second.shutdown()


@pytest.mark.parametrize(
    ("mode", "spooled", "rejected"),
    [("reject", 0, 4), ("exhausted", 0, 4), ("exhausted-retry", 1, 0), ("unavailable", 1, 0)],
)
def test_permanent_codes_drop_retryable_ones_spool(
    grpc_receiver, grpc_env, mode, spooled, rejected
):
    grpc_receiver.set(mode)
    exporter = SpoolSpanExporter()
    exporter.export(batches(1, per_batch=4)[0])
    assert exporter.stats()["batches"] == spooled
    assert dropped_counts().get(("traces", "rejected"), 0) == rejected
    exporter.shutdown()


class _Error(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, trailing: tuple = ()) -> None:
        self._code, self._trailing = code, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def trailing_metadata(self) -> tuple:
        return self._trailing


def test_status_codes_follow_the_otlp_specification():
    codes = grpc.StatusCode
    retry = {codes.CANCELLED, codes.DEADLINE_EXCEEDED, codes.ABORTED, codes.OUT_OF_RANGE}
    retry |= {codes.UNAVAILABLE, codes.DATA_LOSS}
    for code in codes:
        if code is codes.OK or code is codes.RESOURCE_EXHAUSTED:
            continue
        want = Outcome.RETRY if code in retry else Outcome.REJECTED
        assert outcome_of_error(_Error(code)) is want, code
    exhausted = codes.RESOURCE_EXHAUSTED
    assert outcome_of_error(_Error(exhausted)) is Outcome.REJECTED
    retry_info = (("google.rpc.retryinfo-bin", b"\x0a\x02\x08\x01"),)
    assert outcome_of_error(_Error(exhausted, retry_info)) is Outcome.RETRY


def test_a_hanging_endpoint_costs_one_timeout_then_disk_writes(
    grpc_receiver, grpc_env, monkeypatch
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    grpc_receiver.set("hang")
    exporter = SpoolSpanExporter()
    sent = batches(11, per_batch=3)
    started = time.monotonic()
    exporter.export(sent[0])  # one call, its deadline the export timeout: no retry loop
    first = time.monotonic() - started
    costs = []
    for batch in sent[1:]:
        started = time.monotonic()
        exporter.export(batch)
        costs.append(time.monotonic() - started)
    assert 0.9 <= first <= 2.0, first
    assert max(costs) < 0.5, costs
    grpc_receiver.set("ok")
    assert exporter.force_flush(30_000)
    assert grpc_receiver.span_names() == [s.name for b in sent for s in b]
    exporter.shutdown()


# --- the gate: the exporter's own channel, or a channel of the spool's own -----------------
def test_public_fallback_sends_what_the_exporter_itself_sends(grpc_receiver, grpc_env, monkeypatch):
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "api-key=k1,x-tenant=cam%20yard")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    spans = batches(1, per_batch=3)[0]
    stock = OTLPSpanExporter()  # the reference: the standard exporter's own export()
    assert stock.export(spans).name == "SUCCESS"
    stock.shutdown()
    private, keeps = [], _keeps_a_channel()
    for gate in (True, False):
        _otel_private._force(None if gate else False)
        exporter = SpoolSpanExporter()
        private.append(not isinstance(exporter._core._send, GrpcSender))
        exporter.export(spans)
        exporter.shutdown()
    assert private == [keeps, False]  # before 1.40: the public way only
    reference, via_gate, via_public = grpc_receiver.calls
    assert via_gate.body == via_public.body == reference.body
    assert reference.body == encode_spans(spans).SerializeToString()
    for key in ("api-key", "x-tenant", "grpc-accept-encoding"):
        assert via_public.metadata.get(key) == via_gate.metadata.get(key), key
        assert via_public.metadata.get(key) == reference.metadata.get(key), key
    assert via_public.metadata["x-tenant"] == "cam yard"


def test_compression_and_tls_are_read_as_the_exporter_reads_them(grpc_env, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    assert GrpcSender("traces").compression is grpc.Compression.Gzip
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "none")
    assert GrpcSender("logs").compression is grpc.Compression.NoCompression
    assert (
        GrpcSender("logs", compression=grpc.Compression.Gzip).compression is grpc.Compression.Gzip
    )
    assert GrpcSender("traces").insecure  # http:// endpoint
    options = dict(GrpcSender("traces", max_backoff_s=2.0).options)
    assert options["grpc.max_reconnect_backoff_ms"] == 2000  # not gRPC's 2 minutes
    assert not GrpcSender("traces", endpoint="https://collector:4317").insecure
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "false")
    assert not GrpcSender("traces", endpoint="collector:4317").insecure
    assert GrpcSender("traces", endpoint="collector:4317").target == "collector:4317"
    assert GrpcSender("metrics", endpoint="collector:4317").insecure is False


def _keeps_a_channel() -> bool:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:9", insecure=True)
    try:
        return _otel_private.private_grpc_sender(exporter, "traces") is not None
    finally:
        exporter.shutdown()


def test_the_gate_takes_the_channel_only_where_the_exporter_can_rebuild_it(monkeypatch):
    class Channel:
        def __init__(self) -> None:
            self.methods: list[str] = []
            self.closed = False

        def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
            self.methods.append(method)
            return lambda body, metadata, timeout: self.methods.append((body, metadata, timeout))

        def close(self) -> None:
            self.closed = True

    class Exporter140:
        def __init__(self) -> None:
            self._channel, self._headers, self.rebuilt = Channel(), (("k", "v"),), 0

        def _initialize_channel_and_stub(self) -> None:
            self._channel, self.rebuilt = Channel(), self.rebuilt + 1

    shaped = Exporter140()
    send = _otel_private.private_grpc_sender(shaped, "logs")
    assert send is not None and send(b"body", 2.0) is Outcome.SENT
    assert shaped._channel.methods == [
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        (b"body", (("k", "v"),), 2.0),
    ]
    send(b"again", 1.0)
    assert shaped.rebuilt == 0  # a call that went through keeps its channel
    exporter130 = type("Exporter130", (), {"_headers": ()})()  # a stub, no channel
    assert _otel_private.private_grpc_sender(exporter130, "logs") is None
    exporter135 = type("Exporter135", (), {"_headers": (), "_channel": Channel()})()
    assert _otel_private.private_grpc_sender(exporter135, "logs") is None  # cannot rebuild
    monkeypatch.setattr(metadata, "version", lambda name: "1.46.0")
    _otel_private._force(None)
    assert _otel_private.private_grpc_sender(Exporter140(), "logs") is None


def test_a_failed_call_on_the_exporters_channel_gets_a_fresh_channel(grpc_receiver, grpc_env):
    exporter = SpoolSpanExporter()
    inner = exporter._inner
    grpc_receiver.set("unavailable")
    if hasattr(inner, "_initialize_channel_and_stub"):  # gRPC exporter >= 1.40
        before = inner._channel
        exporter.export(batches(1)[0])
        assert inner._channel is not before  # the next attempt connects at once
    else:
        # Older exporters cannot rebuild their channel: the gate keeps them on the public
        # channel, whose reconnect backoff the spool caps itself.
        assert _otel_private.private_grpc_sender(inner, "traces") is None
        exporter.export(batches(1)[0])
    grpc_receiver.set("ok")
    assert exporter.force_flush(30_000)
    assert len(grpc_receiver.span_names()) == 10
    exporter.shutdown()


# --- zero-code: opentelemetry-instrument with opentelemetry-distro, protocol left unset -----
APP = """
import logging
from opentelemetry import metrics, trace

for n in range(5):
    with trace.get_tracer("app").start_as_current_span(f"frame {n}"):
        pass
metrics.get_meter("app").create_counter("frames").add(5)
logging.getLogger("app").warning("camera lost")
"""  # nothing configured in code: the distro and the SDK's configurator do it all


def test_zero_code_with_the_distro_spools_over_grpc(grpc_receiver, grpc_env, tmp_path):
    import os
    import subprocess
    import sys
    from importlib import metadata
    from pathlib import Path

    metadata.version("opentelemetry-distro")  # installed: the distro's default is in force
    instrument = Path(sys.executable).with_name("opentelemetry-instrument")
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_EXPORTER_OTLP_PROTO")}
    env.update(
        OTEL_TRACES_EXPORTER="visiontel_spool",
        OTEL_METRICS_EXPORTER="visiontel_spool",
        OTEL_LOGS_EXPORTER="visiontel_spool",
        OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED="true",
        OTEL_SERVICE_NAME="zero-code-grpc",
    )

    def run() -> str:
        done = subprocess.run(
            [str(instrument), sys.executable, "-W", "ignore", str(app)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr

    grpc_receiver.set("unavailable")
    stderr = run()
    assert "OTLP/HTTP only" not in stderr and "not supported" not in stderr, stderr[-2000:]
    for signal in ("traces", "metrics"):  # the endpoint was down: on disk
        assert list((grpc_env / signal).glob("*.batch")), (signal, stderr[-2000:])
    assert grpc_receiver.calls == [] and grpc_receiver.attempts > 0  # gRPC was tried
    grpc_receiver.set("ok")
    run()  # the next start, endpoint up: the first run's batches first
    assert grpc_receiver.span_names() == [f"frame {n}" for n in range(5)] * 2
    names = [n for body in grpc_receiver.bodies("metrics") for n in metric_names(body)]
    assert names.count("frames") >= 2
    assert not list((grpc_env / "traces").glob("*.batch"))
