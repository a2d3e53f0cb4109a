"""SIGKILL a spooling writer at many random moments: the spool always opens, holds only
whole batches, and replays them cleanly."""

from __future__ import annotations

import os
import random
import signal
import time

from test_spool_restart import expected_names, start_child, whole_batches

from visiontel.spool import SpoolSpanExporter
from visiontel.spool._spool import HEADER, TEMP_PREFIX, Spool

# nox's `isolated` session kills 25 times; the sessions that rerun spool's tests on other
# torch and OpenTelemetry releases, where only the exporter layer differs, kill 5 times.
KILLS = int(os.environ.get("VISIONTEL_SPOOL_KILLS", "25"))


def test_kill_at_random_moments_leaves_only_whole_batches(receiver, otlp_env, monkeypatch):
    monkeypatch.setenv("VISIONTEL_SPOOL_MAX_BYTES", str(2**40))  # no eviction in this test
    receiver.set("reset")
    directory = otlp_env / "traces"
    rng = random.Random(20261204)
    expected: list[int] = []
    temp_files_seen = 0
    for kill in range(KILLS):
        child = start_child(kill * 100_000, 1_000_000, "hold", pad=rng.choice([0, 5_000, 50_000]))
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        # The kill moment is what is random here; nothing waits on this sleep.
        time.sleep(rng.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        printed = [int(line) for line in child.stdout.read().split()]
        child.wait(timeout=30)
        temp_files_seen += sum(1 for p in directory.glob(TEMP_PREFIX + "*"))

        spool = Spool(directory, 2**40)  # opens: the dead writer's lock is gone
        assert not list(directory.glob(TEMP_PREFIX + "*")), "temp files must be cleaned on open"
        assert spool.tally.corrupt_batches == 0
        batches = list(spool._entries)  # oldest first, as the replayer would take them
        for entry in batches:
            body = spool.read(entry)
            assert body is not None, f"{entry.path.name} failed its checks"
            assert entry.size == HEADER.size + len(body)
        assert spool.tally.corrupt_batches == 0
        spool.close()
        kept = len(batches) - len(expected)
        # Every batch the child reported is on disk; at most one more it had not reported.
        assert kept - len(printed) in (0, 1), (kept, len(printed))
        expected += [kill * 100_000 + n for n in range(kept)]
    receiver.set("ok")
    exporter = SpoolSpanExporter()
    assert exporter.force_flush(60_000)
    names = receiver.span_names()
    assert whole_batches(names) == expected
    assert names == expected_names(expected)
    assert exporter.stats()["corrupt_batches"] == 0
    exporter.shutdown()
    print(f"{KILLS} kills, {len(expected)} batches, {temp_files_seen} interrupted writes")
