"""Headers never reach the disk; an outage costs export() a disk write, not a timeout."""

from __future__ import annotations

import time

from spool_support import batches

from visiontel.spool import SpoolSpanExporter

SECRET = "s3cr3t-api-key-9f8e7d6c"


def test_headers_are_sent_but_never_written(receiver, otlp_env, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"api-key={SECRET}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    receiver.set("reset")
    exporter = SpoolSpanExporter()
    for batch in batches(10):
        exporter.export(batch)
    on_disk = [p for p in otlp_env.rglob("*") if p.is_file()]
    assert any(p.suffix == ".batch" for p in on_disk)
    for path in on_disk:
        assert SECRET.encode() not in path.read_bytes(), path
    receiver.set("ok")
    assert exporter.force_flush(30_000)
    assert len(receiver.requests) == 10
    assert all(r.headers.get("api-key") == SECRET for r in receiver.requests)
    assert all(r.headers.get("content-encoding") == "gzip" for r in receiver.requests)
    exporter.shutdown()


def test_a_hanging_endpoint_costs_one_timeout_then_disk_writes(receiver, otlp_env, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
    receiver.set("hang")
    exporter = SpoolSpanExporter()
    sent = batches(21, per_batch=5)
    started = time.monotonic()
    exporter.export(sent[0])  # the link is believed up: one send, which times out
    first = time.monotonic() - started
    costs = []
    for batch in sent[1:]:
        started = time.monotonic()
        exporter.export(batch)
        costs.append(time.monotonic() - started)
    assert 1.9 <= first <= 4.0, first  # the export timeout (2 s), not the exporter's retries
    assert max(costs) < 1.0, costs  # a disk write each (fsync included), never a timeout
    receiver.set("ok")
    assert exporter.force_flush(30_000)
    assert receiver.span_names() == [s.name for b in sent for s in b]
    exporter.shutdown()
