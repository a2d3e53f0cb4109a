"""The compiled per-forward state against the Python classes it stands in for.

* ``ForwardRecord`` (csrc/record.c): the compiled root hooks make and read it; the Python
  paths (failures, GPU forwards, stages, the resolver) use whichever
  ``_record.record_type()`` gives, so the two must agree on every field, default, argument
  error and method.
* ``ForwardDepth`` (csrc/thread_record.c): each thread's count of instrumented forwards,
  ``_threads.depth`` where the extension loaded; it must count as the threading.local does.
* ``ThreadRecord`` (csrc/thread_record.c): each thread's in-flight record of one model; it
  remembers the last thread's record (None too), which must never show another thread's.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import threading
import weakref
from types import ModuleType
from typing import Any

import pytest
import torch

import visiontel.torch as vt
from visiontel._support.env import env_bool
from visiontel.torch import _compiled, _model, _record, _threads

from torch_support import TinyDetector, loops, make_telemetry

FIELDS = [field.name for field in dataclasses.fields(_record.ForwardRecord)]
REQUIRED = FIELDS[:6]


def _public(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS}


def test_same_fields_in_the_same_order_with_the_same_defaults(compiled: ModuleType) -> None:
    required = [object() for _ in REQUIRED]
    assert _public(compiled.ForwardRecord(*required)) == _public(
        _record.ForwardRecord(*required)  # type: ignore[arg-type]
    )
    every = [object() for _ in FIELDS]  # all by position, then all by name
    assert _public(compiled.ForwardRecord(*every)) == dict(zip(FIELDS, every, strict=True))
    by_name = dict(zip(FIELDS, every, strict=True))
    assert _public(compiled.ForwardRecord(**by_name)) == by_name
    assert _public(_record.ForwardRecord(**by_name)) == by_name


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1, 2, 3), {}),  # a required field missing
        ((1, 2, 3, 4, 5, 6), {"unknown": 1}),
        ((1, 2, 3, 4, 5, 6), {"table": 1}),  # given twice
        (tuple(range(17)), {}),  # one too many
    ],
)
def test_the_same_arguments_are_refused(
    compiled: ModuleType, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    for record_class in (compiled.ForwardRecord, _record.ForwardRecord):
        with pytest.raises(TypeError):
            record_class(*args, **kwargs)


def test_fields_are_set_and_deleted_as_slots_are(compiled: ModuleType) -> None:
    for record_class in (compiled.ForwardRecord, _record.ForwardRecord):
        record = record_class(*range(6))
        record.containers_open += 1
        record.previous = record
        assert record.containers_open == 1 and record.previous is record
        del record.inputs
        with pytest.raises(AttributeError):
            _ = record.inputs
        with pytest.raises(AttributeError):
            record.not_a_field = 1
        assert record != record_class(*range(6))  # identity, as eq=False gives


def test_wall_ns_and_gpu_events_agree(compiled: ModuleType) -> None:
    stamps = [(0, 10, "first"), (~0, 20, None), (1, 30, "second")]
    for stamps_given, start, end in [
        (stamps, "start", "end"),
        (None, None, "end"),
        ([], None, None),
    ]:
        made = [
            record_class(
                None,
                None,
                None,
                1_000,
                5_000_000_000_000_000_000,
                stamps_given,
                start_event=start,
                end_event=end,
            )
            for record_class in (compiled.ForwardRecord, _record.ForwardRecord)
        ]
        assert made[0].gpu_events() == made[1].gpu_events()
        for perf in (1_000, 1_250, 2**62):
            assert made[0].wall_ns(perf) == made[1].wall_ns(perf)
    assert made[0].wall_ns(1_250) == 5_000_000_000_000_000_250


def test_a_record_in_a_cycle_is_collected(compiled: ModuleType) -> None:
    class Held:
        pass

    held = Held()
    gone = weakref.ref(held)
    record = compiled.ForwardRecord(*range(6), inputs=held)
    record.previous = record  # a cycle only the cyclic collector can free
    del record, held
    gc.collect()
    assert gone() is None


@pytest.mark.parametrize("chosen", ["compiled", "pure"])
def test_the_hooks_make_the_records_of_the_loops_chosen(compiled: ModuleType, chosen: str) -> None:
    telemetry = make_telemetry()
    model = TinyDetector()
    seen: list[type] = []
    with loops(compiled if chosen == "compiled" else None):
        vt.instrument_model(
            model,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
        )
    try:
        instrumentation = _model.instrumentation_of(model)
        assert instrumentation is not None
        state = instrumentation._tls
        model.backbone.register_forward_hook(lambda *_: seen.append(type(state.record)))
        with torch.inference_mode():
            model(torch.randn(1, 3, 32, 32))
    finally:
        vt.uninstrument_model(model)
    expected = compiled.ForwardRecord if chosen == "compiled" else _record.ForwardRecord
    assert seen == [expected]


def _count(depth: Any) -> list[int]:
    """The values a depth counter shows through a sequence of changes on two threads."""
    seen = [depth.value]
    depth.value += 2
    seen.append(depth.value)

    def other() -> None:
        seen.append(depth.value)  # another thread starts at 0
        depth.value += 5
        seen.append(depth.value)

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    seen.append(depth.value)  # its change stayed on its thread
    depth.value -= 1
    seen.append(depth.value)
    del depth.value  # back to the default
    seen.append(depth.value)
    return seen


def test_forward_depth_counts_per_thread_as_the_threading_local(compiled: ModuleType) -> None:
    assert _count(compiled.ForwardDepth()) == _count(_threads.Depth()) == [0, 2, 0, 5, 2, 1, 0]
    pure = env_bool(_compiled.ENV_PURE_PYTHON, False)
    assert type(_threads.depth) is (_threads.Depth if pure else compiled.ForwardDepth)
    with pytest.raises(TypeError):
        compiled.ForwardDepth().value = "one"


def _records_seen(state: Any) -> list[Any]:
    """Two threads take turns setting and reading their records (each step waits for the
    one before), so that each read follows the other thread's last write or read."""
    first, second, seen = object(), object(), []
    steps = [threading.Event() for _ in range(7)]

    def other() -> None:
        steps[0].wait()
        seen.append(state.record)  # None: only the main thread set one
        steps[1].set()
        steps[2].wait()
        state.record = second
        seen.append(state.record)
        steps[3].set()
        steps[4].wait()
        state.record = None
        seen.append(state.record)
        steps[5].set()

    thread = threading.Thread(target=other)
    thread.start()
    state.record = first
    steps[0].set()
    steps[1].wait()
    seen.append(state.record)  # its own, after the other thread read None
    state.record = first
    steps[2].set()
    steps[3].wait()
    seen.append(state.record)  # its own, after the other thread set and read its record
    steps[4].set()
    steps[5].wait()
    seen.append(state.record)
    state.record = None
    seen.append(state.record)
    thread.join()
    return [None if item is None else "first" if item is first else "second" for item in seen]


def test_thread_record_keeps_each_threads_record_as_the_threading_local(
    compiled: ModuleType,
) -> None:
    expected = [None, "first", "second", "first", None, "first", None]
    assert _records_seen(compiled.ThreadRecord()) == _records_seen(_threads.ThreadState())
    assert _records_seen(compiled.ThreadRecord()) == expected


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_a_forked_child_keeps_the_forking_threads_depth(compiled: ModuleType) -> None:
    depth = compiled.ForwardDepth()
    depth.value = 3
    pid = os.fork()
    if pid == 0:
        os._exit(0 if depth.value == 3 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
