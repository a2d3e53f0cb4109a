"""Timestamp probes on a model's child modules, installed only while a sampled forward runs.

Two kinds of probe write the same ``(index, perf_counter_ns, event)`` stamps:

* a forward wrapper (the default): while armed, the module's instance dictionary holds
  ``forward`` = a wrapper around the original. ``Module.__call__`` looks ``self.forward`` up
  on every call, so the module stays on torch's fast call path (no hook dispatch) and pays
  one Python frame and two stamps per call — about a quarter of what a pre/post hook pair
  costs (bench/torch_overhead.py). ``try/finally`` closes the call when the layer raises,
  as ``always_call=True`` post-hooks do.
* a pre/post hook pair, for every module of a tree that contains ``DataParallel``: its
  ``replicate`` copies instance dictionaries, so a replica would call the original module's
  forward on another device.

Either kind is registered once and *parked*; arming is a few dictionary stores, ref-counted
across threads, and disarming restores exactly what was there before.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

from visiontel.torch import _compiled
from visiontel.torch._safety import report_internal_error
from visiontel.torch._timing import EventSource, GpuEvent
from visiontel.torch._torch_private import ParkedHook

_ABSENT = object()


def _acquire(events: EventSource, site: str) -> GpuEvent | None:
    try:
        return events.acquire()
    except Exception as exc:
        report_internal_error(site, exc)
        return None


class _CopiesAsInner:
    """An armed forward wrapper that a copy of its module does not inherit.

    While a sampled forward runs, the wrapper sits in the module's instance dictionary, so a
    ``deepcopy`` or ``pickle`` taken then (another thread, a callback) would copy it. A copy
    gets the forward the wrapper calls instead, bound to the copy: the module as if it had
    never been instrumented.
    """

    __slots__ = ("__call__", "_inner")

    def __init__(self, function: Callable[..., Any], inner: list[Any]) -> None:
        self.__call__ = function  # an instance slot: calls go straight to the closure
        self._inner = inner

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return copy.deepcopy(self._inner[0], memo)

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self._inner[0].__reduce_ex__(protocol)


class _Wrapper:
    """One module's forward wrapper and what to put back when it is taken off."""

    __slots__ = ("_function", "_inner", "_instance_dict", "_module", "_previous")

    def __init__(self, module: Any, function: Callable[..., Any], inner: list[Any]) -> None:
        self._module, self._instance_dict = module, module.__dict__
        self._function, self._inner = function, inner
        self._previous: object = _ABSENT

    def install(self) -> None:
        current = self._instance_dict.get("forward", _ABSENT)
        if current is self._function:
            return
        self._previous = current
        # the class's forward, bound now, unless the instance carries its own
        self._inner[0] = self._module.forward if current is _ABSENT else current
        self._instance_dict["forward"] = self._function

    def uninstall(self) -> None:
        if self._instance_dict.get("forward") is not self._function:
            return  # something was stacked on top of us: it puts us back, and we stay idle
        if self._previous is _ABSENT:
            del self._instance_dict["forward"]
        else:
            self._instance_dict["forward"] = self._previous
        self._previous = _ABSENT


class ChildProbes:
    """The stamping probes of one instrumented model."""

    def __init__(self, state: Any, is_compiling: Callable[[], bool], use_hooks: bool) -> None:
        self._state = state
        self._is_compiling = is_compiling
        self._use_hooks = use_hooks
        self._lock = threading.Lock()
        self._armed = 0
        self._wrappers: list[Any] = []  # _Wrapper, or its compiled ForwardSwap
        self._hooks: list[ParkedHook] = []
        self._by_index: dict[int, list[Any]] = {}

    def add(self, index: int, module: Any, role: str = "") -> None:
        """Probe ``module``; ``role`` "container"/"element" while a stage container is on trial."""
        with self._lock:  # probes may change while other threads arm (stage containers)
            self._add_locked(index, module, role)

    def drop(self, index: int) -> None:
        """Take the probes of one module away for good."""
        with self._lock:
            self._drop_locked(index)

    def settle(self, index: int, module: Any) -> None:
        """A stage container's trial is over and ``module`` keeps its probe: the probe no
        longer asks, at every call, whether a container is open (a Python frame per call
        for each layer of a model that iterates its container, as Ultralytics' do)."""
        if self._use_hooks:
            return  # hook probes have no trial role
        with self._lock:  # one step: a forward on another thread never finds it unprobed
            self._drop_locked(index)
            self._add_locked(index, module, "")

    def _add_locked(self, index: int, module: Any, role: str) -> None:
        import torch

        wrappers, hooks = len(self._wrappers), len(self._hooks)
        if not self._use_hooks:
            self._add_wrapper(index, module, role)
        elif not isinstance(module, torch.jit.ScriptModule):  # they refuse Python hooks
            self._add_hooks(index, module)
        added = self._wrappers[wrappers:] + self._hooks[hooks:]
        self._by_index[index] = added
        if self._armed:
            for probe in added:
                probe.arm() if isinstance(probe, ParkedHook) else probe.install()

    def _drop_locked(self, index: int) -> None:
        for probe in self._by_index.pop(index, ()):
            if isinstance(probe, ParkedHook):
                probe.forget()
                self._hooks.remove(probe)
            else:
                probe.uninstall()
                self._wrappers.remove(probe)

    # -- forward wrappers ------------------------------------------------------------------
    def _add_wrapper(self, index: int, module: Any, role: str) -> None:
        # What the wrapper calls is chosen when it is armed: whatever ``forward`` the
        # module has at that moment (its own, or another wrapper: a second instrumented
        # model sharing this module, an accelerator library), so wrappers can stack.
        inner: list[Callable[..., Any]] = [module.forward]
        state, clock, compiling = self._state, time.perf_counter_ns, self._is_compiling
        post = ~index
        compiled = _compiled.speedups
        if compiled is not None:  # the same wrapper, in C (csrc/)
            # (copies as its inner forward itself; checks compiling at the root only)
            stamped = compiled.StampedForward(inner, state, index, _acquire)
            if role:
                stamped = _CopiesAsInner(_on_trial(stamped, inner, state, role), inner)
            self._wrappers.append(compiled.ForwardSwap(module, stamped, inner))
            return

        def stamped_forward(*args: Any, **kwargs: Any) -> Any:
            forward = inner[0]
            record = state.record
            stamps = None if record is None else record.stamps
            if stamps is None or compiling():
                return forward(*args, **kwargs)
            events = record.events
            stamps.append((index, clock(), _acquire(events, "layer start") if events else None))
            try:
                return forward(*args, **kwargs)
            finally:
                stamps.append((post, clock(), _acquire(events, "layer end") if events else None))

        function = _on_trial(stamped_forward, inner, state, role) if role else stamped_forward
        self._wrappers.append(_Wrapper(module, _CopiesAsInner(function, inner), inner))

    # -- parked hooks ----------------------------------------------------------------------
    def _stamp_hook(self, stamp_index: int, site: str) -> Callable[..., None]:
        state, clock, compiling = self._state, time.perf_counter_ns, self._is_compiling

        def stamp(_module: Any, *_inputs_and_output: Any) -> None:
            if compiling():
                return
            record = state.record
            if record is None or record.stamps is None:
                return
            events = record.events
            record.stamps.append((stamp_index, clock(), _acquire(events, site) if events else None))

        return stamp

    def _add_hooks(self, index: int, module: Any) -> None:
        self._hooks.append(ParkedHook(module, self._stamp_hook(index, "layer pre-hook"), False))
        self._hooks.append(ParkedHook(module, self._stamp_hook(~index, "layer post-hook"), True))

    # -- arming ------------------------------------------------------------------------------
    def arm(self) -> None:
        with self._lock:
            self._armed += 1
            if self._armed > 1:
                return
            compiled = _compiled.speedups
            if compiled is not None:
                compiled.install_all(self._wrappers)
            else:
                for wrapper in self._wrappers:
                    wrapper.install()
            for hook in self._hooks:
                hook.arm()

    def disarm(self, force: bool = False) -> None:
        with self._lock:
            self._armed = 0 if force else max(0, self._armed - 1)
            if self._armed:
                return
            compiled = _compiled.speedups
            if compiled is not None:
                compiled.uninstall_all(self._wrappers)
            else:
                for wrapper in self._wrappers:
                    wrapper.uninstall()
            for hook in self._hooks:
                hook.disarm()

    def clear(self) -> None:
        self.disarm(force=True)
        for hook in self._hooks:
            hook.forget()
        self._wrappers.clear()
        self._hooks.clear()
        self._by_index.clear()


def _on_trial(
    stamped: Callable[..., Any], inner: list[Any], state: Any, role: str
) -> Callable[..., Any]:
    """A stage container and its elements, both probed: elements stamp only outside it."""
    if role == "container":

        def container_forward(*args: Any, **kwargs: Any) -> Any:
            record = state.record
            if record is None:
                return stamped(*args, **kwargs)
            record.containers_open += 1
            try:
                return stamped(*args, **kwargs)
            finally:
                record.containers_open -= 1

        return container_forward

    def element_forward(*args: Any, **kwargs: Any) -> Any:
        record = state.record
        if record is not None and record.containers_open:
            return inner[0](*args, **kwargs)
        return stamped(*args, **kwargs)

    return element_forward


def needs_hooks(model: Any) -> bool:
    """True when forward wrappers would be unsafe anywhere in ``model`` (DataParallel)."""
    import torch

    return any(isinstance(module, torch.nn.DataParallel) for module in model.modules())
