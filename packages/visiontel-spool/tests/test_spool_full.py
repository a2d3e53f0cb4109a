"""A full spool drops exactly its oldest batches, and says exactly how many items it lost."""

from __future__ import annotations

import logging

from spool_support import batches

from visiontel.spool import SpoolSpanExporter, dropped_counts
from visiontel.spool._diag import MIN_MAX_BYTES


def disk_bytes(directory) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.batch"))


def test_full_spool_drops_exactly_the_oldest_and_counts_them(receiver, otlp_env, caplog):
    receiver.set("reset")
    exporter = SpoolSpanExporter(max_bytes=MIN_MAX_BYTES)
    sent = batches(60)
    with caplog.at_level(logging.WARNING, logger="visiontel.spool"):
        for batch in sent:
            assert exporter.export(batch).name == "SUCCESS"
            assert disk_bytes(otlp_env / "traces") <= MIN_MAX_BYTES  # never over, at any point
    stats = exporter.stats()
    assert 0 < stats["batches"] < 60 and stats["peak_bytes"] <= MIN_MAX_BYTES
    receiver.set("ok")
    assert exporter.force_flush(30_000)
    names = receiver.span_names()
    all_names = [span.name for batch in sent for span in batch]
    lost = len(all_names) - len(names)
    assert names == all_names[lost:]  # the newest arrived, in order; the lost are the oldest
    assert lost > 0 and lost % 10 == 0  # whole batches
    assert dropped_counts() == {("traces", "full"): lost}
    assert exporter.stats()["dropped_items"] == lost
    assert exporter.stats()["dropped_batches"] == lost // 10
    losses = [r for r in caplog.records if "lost since the last report" in r.getMessage()]
    assert len(losses) == 1, [r.getMessage() for r in losses]  # rate-limited: once a minute
    exporter.shutdown()


def test_a_batch_bigger_than_the_spool_is_the_one_dropped(receiver, otlp_env):
    receiver.set("reset")
    exporter = SpoolSpanExporter(max_bytes=MIN_MAX_BYTES)
    small = batches(2, per_batch=2, pad=10)
    big = batches(1, per_batch=10, pad=10_000)[0]
    exporter.export(small[0])
    exporter.export(big)
    exporter.export(small[1])
    receiver.set("ok")
    assert exporter.force_flush(30_000)
    assert receiver.span_names() == [s.name for s in small[0] + small[1]]
    assert dropped_counts() == {("traces", "full"): 10}
    exporter.shutdown()


def test_the_dropped_metric_reads_the_same_count():
    """visiontel.spool.dropped, observed by a real MeterProvider in a fresh process."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import tempfile
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        from visiontel.spool import _diag, dropped_counts
        _diag.count_loss("traces", "full", 7, 1, tempfile.gettempdir())
        _diag.count_loss("logs", "corrupt", 2, 1, tempfile.gettempdir())
        _diag.register_metric()
        data = reader.get_metrics_data()
        points = {
            (p.attributes["visiontel.signal"], p.attributes["visiontel.reason"]): p.value
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            if m.name == "visiontel.spool.dropped" for p in m.data.data_points
        }
        assert points == dropped_counts() == {("traces", "full"): 7, ("logs", "corrupt"): 2}, points
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
