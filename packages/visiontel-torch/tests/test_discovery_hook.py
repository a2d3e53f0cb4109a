"""Discovery's global hook is there only while a model may still be found.

Steady-state calls of a discovered model must stay on torch's fast path, so the global
forward pre-hook goes away once every module is settled and comes back when a module is
built, copied, loaded or given a parameter. Each test checks both halves: the hook is gone
(read from torch's private dictionary, here only) and every model is still traced from
its first call, exactly as with the hook always on.
"""

from __future__ import annotations

import copy
import gc
import inspect
import io
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import visiontel.torch as vt
from visiontel.torch import TorchInstrumentor, _births, _discovery, _safety
from visiontel.torch._config import config_from_env
from visiontel.torch._discovery import Discovery

from torch_support import Telemetry, TinyDetector

WRAPPED = ("__init__", "__setstate__", "register_parameter")


@pytest.fixture
def discovery(telemetry: Telemetry) -> Iterator[TorchInstrumentor]:
    gc.collect()  # models other tests left in reference cycles would count as pending
    instrumentor = TorchInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    yield instrumentor
    instrumentor.uninstrument()


def _hook_armed() -> bool:
    hooks = torch.nn.modules.module._global_forward_pre_hooks.values()
    return any(isinstance(getattr(hook, "__self__", None), Discovery) for hook in hooks)


def _images() -> torch.Tensor:
    return torch.randn(1, 3, 8, 8)


def _roots(telemetry: Telemetry) -> int:
    return sum(1 for s in telemetry.spans() if s.parent is None)


def _first_call_is_traced(model: torch.nn.Module, telemetry: Telemetry) -> None:
    before = _roots(telemetry)
    model(_images())
    assert vt.is_instrumented(model)
    assert _roots(telemetry) == before + 1  # the discovering call itself is traced


def test_the_hook_goes_once_the_model_is_discovered(
    telemetry: Telemetry, discovery: TorchInstrumentor
) -> None:
    assert _hook_armed()
    model = TinyDetector()
    _first_call_is_traced(model, telemetry)
    model(_images())  # steady state: the settle check runs here
    assert not _hook_armed()
    for _ in range(3):
        model(_images())
    assert _roots(telemetry) == 5  # still traced, now without the global hook


def test_a_model_built_after_the_hook_went_is_found_at_its_first_call(
    telemetry: Telemetry, discovery: TorchInstrumentor
) -> None:
    first = TinyDetector()
    first(_images())
    first(_images())
    assert not _hook_armed()
    second = TinyDetector()
    assert _hook_armed()
    _first_call_is_traced(second, telemetry)
    first(_images())
    assert not _hook_armed()


def test_a_model_built_before_discovery_keeps_the_hook_until_it_is_called(
    telemetry: Telemetry,
) -> None:
    early = TinyDetector()
    gc.collect()
    instrumentor = TorchInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider)
    try:
        model = TinyDetector()
        for _ in range(3):
            model(_images())
        assert _hook_armed()  # `early` may still be called
        _first_call_is_traced(early, telemetry)
        model(_images())  # a new root settled: checked again at once
        assert not _hook_armed()
    finally:
        instrumentor.uninstrument()


def test_a_deep_copy_and_a_loaded_model_are_found_at_their_first_call(
    telemetry: Telemetry, discovery: TorchInstrumentor
) -> None:
    model = TinyDetector()
    model(_images())
    model(_images())
    assert not _hook_armed()
    clone = copy.deepcopy(model)
    assert _hook_armed()
    assert not vt.is_instrumented(clone)
    _first_call_is_traced(clone, telemetry)
    model(_images())
    assert not _hook_armed()

    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert _hook_armed()
    _first_call_is_traced(loaded, telemetry)
    model(_images())
    assert not _hook_armed()


class LateWeight(torch.nn.Module):
    """No parameter when built; one is assigned later."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def test_a_module_given_a_parameter_later_is_found_at_its_first_call(
    telemetry: Telemetry, discovery: TorchInstrumentor
) -> None:
    late = LateWeight()
    model = TinyDetector()
    model(_images())
    model(_images())
    assert not _hook_armed()  # `late` has no parameter: not a model, forgotten
    late.weight = torch.nn.Parameter(torch.ones(1))
    assert _hook_armed()
    _first_call_is_traced(late, telemetry)


def test_close_puts_the_module_methods_back(telemetry: Telemetry) -> None:
    originals = {name: torch.nn.Module.__dict__[name] for name in WRAPPED}
    signature = inspect.signature(torch.nn.Module.__init__)
    instrumentor = TorchInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider)
    try:
        for name in WRAPPED:
            assert torch.nn.Module.__dict__[name] is not originals[name]
        assert inspect.signature(torch.nn.Module.__init__) == signature
        # functools.wraps: the name is whatever was there (torch._dynamo's after compile)
        assert torch.nn.Module.__init__.__name__ == originals["__init__"].__name__
        assert torch.nn.Module.__init__.__wrapped__ is originals["__init__"]  # type: ignore[attr-defined]
        with pytest.raises(TypeError):
            torch.nn.Module(unexpected=1)  # torch's own argument check still runs
    finally:
        instrumentor.uninstrument()
    for name in WRAPPED:
        assert torch.nn.Module.__dict__[name] is originals[name]


def test_several_discoveries_wrap_once_and_the_last_close_unwraps() -> None:
    originals = {name: torch.nn.Module.__dict__[name] for name in WRAPPED}
    first = Discovery(config_from_env())
    wrapped = {name: torch.nn.Module.__dict__[name] for name in WRAPPED}
    second = Discovery(config_from_env())
    assert {name: torch.nn.Module.__dict__[name] for name in WRAPPED} == wrapped
    built = TinyDetector()
    assert all(id(built) in d._pending for d in (first, second))  # both were told
    first.close()
    assert {name: torch.nn.Module.__dict__[name] for name in WRAPPED} == wrapped
    second.close()
    for name in WRAPPED:
        assert torch.nn.Module.__dict__[name] is originals[name]


def test_a_wrapper_put_over_ours_is_left_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch._dynamo wraps Module.__init__ for good: closing must not undo its wrapper."""
    original = torch.nn.Module.__dict__["__init__"]
    monkeypatch.setattr(torch.nn.Module, "__init__", original)  # put back after the test
    monkeypatch.setattr(_births, "_wrapped", {})
    built: list[Any] = []
    first = Discovery(config_from_env())
    ours = torch.nn.Module.__init__

    def theirs(self: Any, *args: Any, **kwargs: Any) -> None:
        ours(self, *args, **kwargs)
        built.append(self)

    torch.nn.Module.__init__ = theirs  # type: ignore[method-assign]
    first.close()
    assert torch.nn.Module.__init__ is theirs
    assert isinstance(torch.nn.Linear(1, 1), torch.nn.Module) and len(built) == 1
    second = Discovery(config_from_env())  # ours is still in their chain: not wrapped again
    assert torch.nn.Module.__init__ is theirs
    module = torch.nn.Linear(1, 1)
    assert id(module) in second._pending
    second.close()


class _Refusing(weakref.WeakValueDictionary):  # type: ignore[type-arg]
    def __setitem__(self, key: Any, value: Any) -> None:
        raise RuntimeError("bookkeeping failed")


def test_building_a_module_survives_a_failing_bookkeeping(
    telemetry: Telemetry,
    discovery: TorchInstrumentor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(discovery._discovery, "_pending", _Refusing())
    errors = _safety.internal_error_count()
    with caplog.at_level(logging.ERROR, logger="visiontel.torch"):
        model = TinyDetector()
        copy.deepcopy(model)
    assert isinstance(model.backbone, torch.nn.Module)
    assert model(_images()) is not None
    assert _safety.internal_error_count() > errors
    reports = [r for r in caplog.records if "discovery bookkeeping" in r.getMessage()]
    assert len(reports) == 1


def test_models_built_and_called_on_several_threads_are_all_found(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building, discovering and settling race each other; no first call is missed."""
    monkeypatch.setattr(_discovery, "_SETTLE_FIRST_S", 0.0)  # a settle check on every
    monkeypatch.setattr(_discovery, "_SETTLE_MAX_S", 0.0)  # steady call: the most races
    monkeypatch.setattr(_discovery, "_PARK_MIN_AGE_S", 0.0)  # parts parked as soon as built
    gc.collect()
    instrumentor = TorchInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider)
    try:
        steady = TinyDetector()
        steady(_images())
        steady_calls, missed = [0], []
        done = threading.Event()

        def build_and_call(worker: int) -> None:
            for round_ in range(8):
                model = TinyDetector()
                model(_images())
                if not vt.is_instrumented(model):
                    missed.append((worker, round_))

        def call_steadily() -> None:
            while not done.is_set():
                steady(_images())
                steady_calls[0] += 1

        runner = threading.Thread(target=call_steadily)
        runner.start()
        workers = [threading.Thread(target=build_and_call, args=(w,)) for w in range(3)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        done.set()
        runner.join()
        assert missed == []
        assert _roots(telemetry) == 1 + steady_calls[0] + 3 * 8
        gc.collect()
        steady(_images())
        assert not _hook_armed()
    finally:
        instrumentor.uninstrument()


@pytest.fixture
def quick_checks(telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Discovery whose settle checks run on every steady call (no back-off in time)."""
    monkeypatch.setattr(_discovery, "_SETTLE_FIRST_S", 0.0)
    monkeypatch.setattr(_discovery, "_PARK_MIN_AGE_S", 0.0)  # park at the second check
    gc.collect()
    instrumentor = TorchInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    yield
    instrumentor.uninstrument()


def _own_pre_hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) for m in module.modules())


def test_a_model_never_called_is_parked_and_found_at_its_first_call(
    telemetry: Telemetry, quick_checks: None
) -> None:
    unused = TinyDetector()  # e.g. YOLO(...).model, when the predictor calls a deep copy
    model = TinyDetector()
    model(_images())  # discovered
    model(_images())  # first settle check: `unused` is still pending
    assert _hook_armed()
    assert _own_pre_hooks(unused) == 0
    model(_images())  # second check in a row: parked, and the global hook goes
    assert not _hook_armed()
    assert _own_pre_hooks(unused) == 6  # one per module holding parameters
    clone = copy.deepcopy(unused)
    assert _own_pre_hooks(clone) == 0, "a parked module's hook never travels with a copy"
    assert _hook_armed()  # the copy is pending (it may be called)
    _first_call_is_traced(unused, telemetry)  # the parked hook judges it, then goes
    # the inner modules' parked hooks fired once, inside that forward, and went too: only
    # the root's own pre-hook is left
    assert _own_pre_hooks(unused) == 1
    unused(_images())
    assert _roots(telemetry) == 3 + 2
    del clone
    gc.collect()
    for _ in range(3):
        model(_images())
    assert not _hook_armed()


def _parked_beside_a_running_model() -> tuple[TinyDetector, TinyDetector]:
    """(a model never called, now parked; the model whose steady calls parked it)."""
    unused = TinyDetector()
    model = TinyDetector()
    for _ in range(3):
        model(_images())
    assert not _hook_armed()
    assert _own_pre_hooks(unused) > 0
    return unused, model


def test_a_parked_model_s_part_called_alone_is_judged_as_the_hook_would(
    telemetry: Telemetry, quick_checks: None
) -> None:
    unused, _model = _parked_beside_a_running_model()
    _first_call_is_traced(unused.backbone, telemetry)  # a part with parameters, called alone
    assert not vt.is_instrumented(unused)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_a_parked_model_can_be_scripted_and_is_still_found(
    telemetry: Telemetry, quick_checks: None
) -> None:
    unused, _model = _parked_beside_a_running_model()
    scripted = torch.jit.script(unused.backbone)  # the parked hooks are not compiled into it
    images = torch.ones(1, 3, 8, 8)
    expected = scripted(images)
    assert torch.equal(unused.backbone(images), expected)  # its first plain call...
    assert vt.is_instrumented(unused.backbone)  # ...found it, as the global hook would


def test_a_parked_model_can_be_fused_for_quantization_and_is_still_found(
    telemetry: Telemetry, quick_checks: None
) -> None:
    """``torch.ao`` fusing moves a module's hooks onto the fused one through ``values()``,
    re-registered without their flags: visiontel's are not handed over, so the fused model
    runs, and its first call is still found."""
    from torch.ao.quantization import fuse_modules

    torch.manual_seed(1)
    unused = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()
    ).eval()
    model = TinyDetector()
    for _ in range(3):
        model(_images())
    assert not _hook_armed()
    assert _own_pre_hooks(unused) == 3  # parked: the Sequential, the conv, the norm
    images = _images()
    with torch.no_grad():
        expected = torch.nn.functional.relu(unused[1](unused[0](images)))
        fuse_modules(unused, [["0", "1", "2"]], inplace=True)
        _first_call_is_traced(unused, telemetry)
        assert torch.allclose(unused(images), expected, atol=1e-5)


def test_a_root_checked_while_it_is_built_is_still_found_after_parking(
    telemetry: Telemetry, quick_checks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settle check that runs while a model is being built (another thread's steady
    calls) sees its root before any child with parameters is attached. The root must stay
    pending for that while: otherwise, once the children are parked, the model's first call
    finds a child as the root."""
    monkeypatch.setattr(_discovery, "_PARK_MIN_AGE_S", 0.3)  # parked once this old
    model = TinyDetector()
    model(_images())  # discovered: its steady calls run a settle check each

    class BuiltSlowly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()  # the root exists here, without a parameter yet
            model(_images())  # a settle check in the middle of building
            model(_images())
            self.backbone = TinyDetector()
            self.aux = torch.nn.Linear(2, 2)  # a training-only part: not a wrapper of one

        def forward(self, images: torch.Tensor) -> Any:
            return self.backbone(images)

    late = BuiltSlowly()
    time.sleep(0.35)  # old enough to park
    for _ in range(3):
        model(_images())
    assert not _hook_armed(), "everything pending is parked"
    _first_call_is_traced(late, telemetry)
    assert not vt.is_instrumented(late.backbone), "the root is the model, not its part"
