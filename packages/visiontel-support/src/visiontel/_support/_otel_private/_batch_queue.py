"""The SDK's ``BatchSpanProcessor`` queue, read and filled directly (behind the gate).

Its queue and wake-up event are private and their layout changed across releases (1.30-1.33
name the queue without the underscore and wake the exporter through a condition): both
are read duck-typed, and anything not laid out as known here gives ``None`` (the public
``on_end``) or ``(0, 0)``.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Any


def queue_fillers(processors: Any) -> tuple[Any, Any] | None:
    """(``on_end`` for a list of finished spans, ``on_end`` for one), each one queue operation
    per batch processor, or ``None`` where the SDK's layout is not the one known here.

    Every processor is the SDK's ``BatchSpanProcessor``, whose ``on_end`` only puts a span in
    its queue (checking shutdown, fork and room, then waking its exporter when a batch is
    ready). A forward's layer spans go in with one ``extendleft``, in the order the same
    number of ``on_end`` calls would leave; one span with one ``appendleft``, one Python
    call where the processor chain makes three (the sampled flag, which every span built
    here has, is not read again). When the processor is shut down, forked or without room
    for all of them, each span goes through its own ``on_end`` (the SDK's drop counting,
    warnings and fork handling).
    """
    queues = _known_queues(processors)
    if queues is None:
        return None

    def on_end_many(spans: list[Any]) -> None:
        pid = os.getpid()
        for processor, inner in queues:
            pending = inner._queue
            if (
                inner._shutdown
                or inner._pid != pid
                or len(pending) + len(spans) > inner._max_queue_size
            ):
                for span in spans:
                    processor.on_end(span)
                continue
            pending.extendleft(spans)
            if len(pending) >= inner._max_export_batch_size and not inner._worker_awaken.is_set():
                inner._worker_awaken.set()

    def on_end_one(span: Any) -> None:  # on_end_many([span]), without the list
        pid = os.getpid()
        for processor, inner in queues:
            pending = inner._queue
            if inner._shutdown or inner._pid != pid or len(pending) >= inner._max_queue_size:
                processor.on_end(span)
                continue
            pending.appendleft(span)
            if len(pending) >= inner._max_export_batch_size and not inner._worker_awaken.is_set():
                inner._worker_awaken.set()

    return on_end_many, on_end_one


def _known_queues(processors: Any) -> list[tuple[Any, Any]] | None:
    """(processor, the object holding its queue) for each, or None where one is not laid
    out as known here."""
    queues: list[tuple[Any, Any]] = []
    for processor in processors:
        inner, pending = _batch_queue(processor)
        wake = getattr(inner, "_worker_awaken", None)
        newer_layout = pending is not None and pending is getattr(inner, "_queue", None)
        if not newer_layout or not isinstance(wake, threading.Event):
            return None  # the older layout (public ``queue``, a condition): one by one
        for name in ("_shutdown", "_pid", "_max_queue_size", "_max_export_batch_size"):
            if not hasattr(inner, name):
                return None
        queues.append((processor, inner))
    return queues


def batch_queue_fill(provider: Any) -> tuple[int, int]:
    """(queued, capacity) of the first batch span processor found, or (0, 0)."""
    active = getattr(provider, "_active_span_processor", None)
    for processor in getattr(active, "_span_processors", ()):
        _, pending = _batch_queue(processor)
        if pending is not None:
            return len(pending), int(pending.maxlen)
    return 0, 0


def _batch_queue(processor: Any) -> tuple[Any, Any]:
    """(the object holding it, the bounded deque) of a batch span processor's queue, or
    (…, None). The SDK keeps both private; they are read duck-typed, absence tolerated."""
    inner = getattr(processor, "_batch_processor", processor)
    pending = getattr(inner, "_queue", None)
    if pending is None:  # older SDKs (1.30-1.33 checked) name it without the underscore
        pending = getattr(inner, "queue", None)
    if isinstance(pending, collections.deque) and pending.maxlen:
        return inner, pending
    return inner, None
