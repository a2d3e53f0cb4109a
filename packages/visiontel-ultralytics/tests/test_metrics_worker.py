"""The metrics worker: jobs gather, then run back to back; a flush or a full gathering runs
them at once; a worker that falls behind drops and counts; nothing is lost otherwise."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest

from visiontel.ultralytics import _metrics


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> _metrics.MetricsWorker:
    monkeypatch.setattr(_metrics, "_GATHER_S", 30.0)  # only a count or a flush ends one
    return _metrics.MetricsWorker()


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)  # polling what the worker did, not synchronising with it
    return False


def test_jobs_gather_then_run_back_to_back(worker: _metrics.MetricsWorker) -> None:
    ran: list[tuple[int, int]] = []
    worker.submit(lambda: ran.append((0, threading.get_ident())))
    time.sleep(0.3)
    assert ran == []  # waiting for the others, not run as it came
    for n in range(1, _metrics._GATHER_BATCHES):
        worker.submit(lambda n=n: ran.append((n, threading.get_ident())))
    assert _until(lambda: len(ran) == _metrics._GATHER_BATCHES)  # a full gathering: at once
    assert [n for n, _ in ran] == list(range(_metrics._GATHER_BATCHES))
    assert {thread for _, thread in ran} == {worker.thread_id()} != {threading.get_ident()}
    assert worker.flush(10.0)


def test_flush_runs_a_gathering_at_once(worker: _metrics.MetricsWorker) -> None:
    ran: list[int] = []
    for n in range(3):
        worker.submit(lambda n=n: ran.append(n))
    started = time.monotonic()
    assert worker.flush(10.0)
    assert ran == [0, 1, 2]
    assert time.monotonic() - started < 5.0  # not the 30 s gathering
    assert worker.flush(0.0)  # nothing left: an idle worker is flushed at once


def test_a_worker_that_falls_behind_drops_and_counts(
    worker: _metrics.MetricsWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_metrics, "_MAX_PENDING_BATCHES", 3)
    ran: list[int] = []
    for n in range(5):
        worker.submit(lambda n=n: ran.append(n))
    assert worker.dropped == 2
    assert worker.flush(10.0)
    assert ran == [0, 1, 2]  # the oldest kept, in order


def test_jobs_submitted_while_a_gathering_runs_are_not_lost(
    worker: _metrics.MetricsWorker,
) -> None:
    gate, ran = threading.Event(), []
    worker.submit(lambda: gate.wait(10) and None)
    worker.flush(0.0)  # ends the gathering: the worker now waits on the gate
    for n in range(40):  # appended while the worker is busy: some gatherings' worth
        worker.submit(lambda n=n: ran.append(n))
    gate.set()
    assert worker.flush(10.0)
    assert ran == list(range(40))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_a_forked_child_gets_a_worker_of_its_own(worker: _metrics.MetricsWorker) -> None:
    gate = threading.Event()
    worker.submit(lambda: gate.wait(10) and None)  # the parent's job, never the child's
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own thread runs its own jobs; the parent's are not waited
        ran: list[int] = []
        worker.submit(lambda: ran.append(1))
        os.write(write, b"ok" if worker.flush(10.0) and ran == [1] else b"no")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 2)
    os.close(read)
    os.waitpid(pid, 0)
    gate.set()
    assert answer == b"ok"
    assert worker.flush(10.0)


def test_jobs_from_several_threads_run_without_a_flush(
    worker: _metrics.MetricsWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_metrics, "_GATHER_S", 0.05)
    for _ in range(20):  # rounds of four threads submitting at the same moment
        ran: list[int] = []
        start = threading.Barrier(4)

        def submit(n: int, start: threading.Barrier = start, ran: list[int] = ran) -> None:
            start.wait()
            worker.submit(lambda: ran.append(n))

        threads = [threading.Thread(target=submit, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert _until(lambda ran=ran: len(ran) == 4, timeout=5.0)  # no flush: the worker woke
        assert sorted(ran) == [0, 1, 2, 3]
