"""Per-thread state of the root hooks: each model's in-flight record, and the count of
instrumented forwards running.

Where the C extension loaded, the record and the count live in its types
(``_speedups.ThreadRecord``, ``_speedups.ForwardDepth``), which the compiled hooks read
without a ``threading.local`` lookup; they behave as the ``threading.local`` versions here.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from visiontel.torch import _compiled
from visiontel.torch._record import ForwardRecord


class ThreadState(threading.local):
    record: ForwardRecord | None = None


_compiled_states: weakref.WeakSet[Any] = weakref.WeakSet()


def thread_state() -> Any:
    """Each thread's in-flight record of one model: ``_speedups.ThreadRecord`` where the
    compiled loops run (its layer wrappers read it without a threading.local lookup)."""
    compiled = _compiled.speedups
    if compiled is None:
        return ThreadState()
    state = compiled.ThreadRecord()
    _compiled_states.add(state)
    return state


def _after_fork_in_child() -> None:
    # A threading.local forgets the threads that do not exist in the child; do the same.
    for state in list(_compiled_states):
        state.keep_this_thread()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Depth(threading.local):
    value = 0


def _depth_counter() -> Any:
    """Each thread's count of instrumented forwards running: ``_speedups.ForwardDepth``
    where the extension loaded (read and written by the compiled hooks without a
    threading.local lookup), whichever loops run later."""
    compiled = _compiled.speedups
    return Depth() if compiled is None else compiled.ForwardDepth()


depth = _depth_counter()
"""This process's counter (the hooks of every model share it: nested forwards count)."""


def forward_depth() -> int:
    """How many instrumented forwards are running on this thread right now."""
    count: int = depth.value
    return count
