"""Finished spans gathered over a run of later work, handed to the processors at its end.

visiontel-torch ends most of its spans as later work: a forward's root span, its stage and
layer spans, a ``stage`` block's span, in runs of up to 64 forwards. Handing each one to
the SDK's processor chain on its own costs a dozen Python calls a span (the multi-processor
loop, the batch processor's checks, its queue). Where every processor is the SDK's
``BatchSpanProcessor`` (``FastPath.on_end_many`` is set), the spans a run ends wait in a
list per provider instead and go in with one queue operation when the run is over: the
exporter sees the same spans, a few milliseconds later, as one batch processor would
have queued them anyway.

The gathering is per thread (``threading.local``): spans ended on other threads meanwhile
go to the processors at once, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from visiontel._support._otel_private import FastPath

OnEndMany = Callable[[list[Any]], None]
"""A provider's ``FastPath.on_end_many``: the gathered spans are kept per one of these."""


class _Gathering(threading.local):
    spans: dict[OnEndMany, list[Any]] | None = None
    """While a run of later work is open on this thread: its finished spans, per provider
    (keyed by where they go)."""


gathering = _Gathering()
_MOST_WAITING = 512  # spans per provider; then they go in at once (``_hand_over_waiting``)


def hand_over(path: FastPath, finished: Any) -> None:
    """Give one finished span (a ``ReadableSpan``) to ``path``'s processors: at the end of
    this thread's open run of later work where they take batches, else now."""
    spans, on_end_many = gathering.spans, path.on_end_many
    if spans is None or on_end_many is None:
        path.on_end(finished)
        return
    waiting = spans.get(on_end_many)
    if waiting is None:
        spans[on_end_many] = [finished]
    else:
        waiting.append(finished)
        if len(waiting) >= _MOST_WAITING:
            _hand_over_waiting(on_end_many, spans)


def hand_over_many(path: FastPath, finished: list[Any]) -> None:
    """``hand_over`` for several spans, in order (one queue operation where batched)."""
    spans, on_end_many = gathering.spans, path.on_end_many
    if on_end_many is None:
        for span in finished:
            path.on_end(span)
    elif spans is None:
        on_end_many(finished)
    else:
        waiting = spans.get(on_end_many)
        if waiting is None:
            waiting = spans[on_end_many] = list(finished)
        else:
            waiting.extend(finished)
        if len(waiting) >= _MOST_WAITING:
            _hand_over_waiting(on_end_many, spans)


def _hand_over_waiting(on_end_many: OnEndMany, spans: dict[OnEndMany, list[Any]]) -> None:
    """A run's spans for one provider now: a batch of them must fit in the processor's queue
    (2,048 spans by default) with room to spare, or each would go through ``on_end`` alone."""
    on_end_many(spans.pop(on_end_many))


class ends_gathered:
    """Spans handed over on this thread inside the block reach the processors at its exit,
    one batch per provider. Nested blocks gather into the outermost one."""

    __slots__ = ("_outermost",)

    def __enter__(self) -> None:
        self._outermost = gathering.spans is None
        if self._outermost:
            gathering.spans = {}

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._outermost:
            return
        spans, gathering.spans = gathering.spans, None
        failure: Exception | None = None
        for on_end_many, finished in (spans or {}).items():
            try:
                on_end_many(finished)
            except Exception as error:  # the other providers still get theirs
                failure = failure or error
        if failure is not None:
            raise failure
