"""Context hand-off to threads, asyncio executors, pools and process queues."""

from __future__ import annotations

import asyncio
import importlib.util
import multiprocessing
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context

import visiontel.propagation as vp

FRAME = vp.FrameIdentity("cam-2", 42, 1_700_000_000_000_000_000)


def seen() -> tuple[int, int, vp.FrameIdentity | None, object]:
    """What the code running now sees of the current context (picklable)."""
    sc = trace.get_current_span().get_span_context()
    return sc.trace_id, sc.span_id, vp.get_frame(), baggage.get_baggage("site")


@pytest.fixture
def in_frame(tracing):
    token = otel_context.attach(baggage.set_baggage("site", "dock"))
    try:
        with vp.start_frame("decode", FRAME, tracer=tracing.tracer) as span:
            sc = span.get_span_context()
            yield (sc.trace_id, sc.span_id, FRAME, "dock")
    finally:
        otel_context.detach(token)


def test_plain_thread_does_not_propagate_but_bind_does(in_frame):
    results: list[object] = []
    t = threading.Thread(target=lambda: results.append(seen()))
    t.start()
    t.join()
    assert results[0] != in_frame  # the problem being solved
    t = threading.Thread(target=vp.bind(lambda: results.append(seen())))
    t.start()
    t.join()
    assert results[1] == in_frame


def test_bound_callable_runs_on_many_threads_at_once(in_frame):
    fn = vp.bind(seen)
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda _: fn(), range(16))) == {in_frame}
    assert seen() == in_frame  # caller's context untouched


def test_thread_pool_executor(in_frame):
    with vp.ContextThreadPoolExecutor(2) as pool:
        assert pool.submit(seen).result() == in_frame
        assert list(pool.map(lambda _: seen(), range(3))) == [in_frame] * 3


def test_asyncio_run_in_executor(in_frame):
    async def main():
        loop = asyncio.get_running_loop()
        plain = await loop.run_in_executor(None, seen)
        bound = await loop.run_in_executor(None, vp.bind(seen))
        loop.set_default_executor(vp.ContextThreadPoolExecutor(2))
        default = await loop.run_in_executor(None, seen)
        task = await asyncio.create_task(asyncio.sleep(0, seen()))
        return plain, bound, default, task

    # asyncio.run copies the current contextvars into the loop's main task.
    plain, bound, default, task = asyncio.run(main())
    assert plain != in_frame
    assert bound == default == task == in_frame


def test_process_pool_executor(in_frame):
    ctx = multiprocessing.get_context("spawn")
    with vp.ContextProcessPoolExecutor(1, mp_context=ctx) as pool:
        assert pool.submit(seen).result(timeout=60) == in_frame


def _consumer(q: vp.ContextQueue, out) -> None:
    for _ in range(2):
        item, ctx = q.get(timeout=30)
        token = otel_context.attach(ctx)
        try:
            out.put((item, seen()))
        finally:
            otel_context.detach(token)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_queue(in_frame, method):
    q = vp.multiprocessing_queue(method=method)
    mp = multiprocessing.get_context(method)
    out = mp.Queue()
    proc = mp.Process(target=_consumer, args=(q, out))
    proc.start()
    q.put("frame-bytes")
    q.put("outside", context=otel_context.Context())
    first, second = out.get(timeout=60), out.get(timeout=60)
    proc.join(30)
    assert first == ("frame-bytes", in_frame)
    assert second == ("outside", (0, 0, None, None))
    assert proc.exitcode == 0


def test_queue_over_an_unwrapped_producer(in_frame):
    inner: queue.Queue[object] = queue.Queue()
    q: vp.ContextQueue[object] = vp.ContextQueue(inner)
    inner.put("raw")
    before = vp.rejected_counts().get(("queue", "not_enveloped"), 0)
    item, ctx = q.get_nowait()
    assert item == "raw" and ctx == otel_context.Context()
    assert vp.rejected_counts()[("queue", "not_enveloped")] == before + 1
    q.put_nowait("wrapped")
    assert vp.get_frame(q.get()[1]) == FRAME
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)


def _torch_consumer(q, out) -> None:
    item, ctx = q.get(timeout=60)
    token = otel_context.attach(ctx)
    try:
        out.put((float(item.sum()), seen()))
    finally:
        otel_context.detach(token)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_torch_multiprocessing_queue(in_frame, method):
    import torch
    import torch.multiprocessing as tmp

    q = vp.multiprocessing_queue(method=method, torch=True)
    mp = tmp.get_context(method)
    out = mp.Queue()
    proc = mp.Process(target=_torch_consumer, args=(q, out))
    proc.start()
    q.put(torch.ones(4, 4))  # travels through shared memory, context beside it
    total, seen_there = out.get(timeout=120)
    proc.join(30)
    assert total == 16.0 and seen_there == in_frame


def test_torch_queue_without_torch_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    monkeypatch.setitem(sys.modules, "torch.multiprocessing", None)
    with pytest.raises(ImportError, match="pip install torch"):
        vp.multiprocessing_queue(torch=True)
