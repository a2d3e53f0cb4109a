"""Zero-code discovery: find each model's true root on its first call.

A global forward pre-hook sees every module call made while no instrumented forward runs
on the thread. Each module seen there is judged once:

* no parameters (transforms, activations), TorchScript: never a model;
* a *wrapper* (no parameters of its own, all of them in one child that is not a plain
  container; e.g. a serving class around the detector): not the model; the wrapped child
  is judged when it is called;
* called from a method of a larger module that did not go through ``__call__`` (Ultralytics'
  ``DetectionModel`` runs ``self.forward`` on a dummy image while it is built): not a root
  yet, judged again on a later call; after ``_MAX_DEFERRALS`` such calls the outer module is
  taken to run its forward directly, the call sites are left alone and a warning says so;
* otherwise a root: it is instrumented, and every root discovered earlier inside it is
  withdrawn (folded into it).

A discovered root that later runs inside another instrumented forward is withdrawn as
well, so the outer model stays the only root.

The global hook's mere presence takes every module call in the process off torch's fast
path, so it is only there while it can still find something: while some module *pending*
here may yet become a root. Modules become pending when they exist as discovery starts
(one ``gc.get_objects()`` sweep), and whenever ``Module.__init__`` or ``__setstate__``
(``copy.deepcopy``, ``pickle``, ``torch.load``) makes one or ``register_parameter`` gives
one a parameter: those three are wrapped on the class while discovery is open. A pending
module is *settled*, and forgotten, once it is rejected, has no parameters, is TorchScript
or lies inside an instrumented model. One settled for having no parameters is looked at
again by later settle checks: a settle check that runs while a model is being built (on
another thread) sees its root before any child with parameters is attached, and attaching
one does not make the root pending again; once it has parameters it is pending again.
Calls of an instrumented root at depth 0 (steady state) run the settle check,
rate-limited; when nothing pending is left the hook is removed, and the next module made
or given a parameter puts it back.

A module pending for two seconds and still pending at the second settle check in a row (a
model built and never called, such as the original of Ultralytics' deep copy) is *parked*:
it gets a pre-hook of its own, which never travels with a copy, and stops holding the
global hook. Only its own calls then leave torch's fast path; its first call removes that
hook, makes it pending again (the global hook comes back) and judges it there and then, as
the global hook would have. A younger module is left to the global hook: it is usually
about to be called.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import weakref
from types import FrameType
from typing import Any

from visiontel.torch import _model, _threads
from visiontel.torch._api import instrument_model, uninstrument_model
from visiontel.torch._births import listen, unlisten
from visiontel.torch._config import TorchConfig
from visiontel.torch._safety import report_internal_error, warn_once
from visiontel.torch._torch_private import compiling_check, register_hooks, remove_hooks
from visiontel.torch._tree import is_compiled

_MAX_DEFERRALS = 3
_MAX_FRAMES = 64
# Settle checks cost O(pending + instrumented modules): the first runs on the first steady
# call, later ones back off while modules stay unsettled (a model that is never called).
_SETTLE_FIRST_S = 0.5
_SETTLE_MAX_S = 8.0
_PARK_AFTER_CHECKS = 2  # settle checks in a row that found a module still pending
# ...and pending this long (a module just built is usually about to be called: parking it
# would only be undone)
_PARK_MIN_AGE_S = 2.0


class Discovery:
    """The global hook and what it has decided; ``close()`` undoes all of it."""

    def __init__(self, config: TorchConfig) -> None:
        import torch

        self._config = config
        self._lock = threading.Lock()  # what has been decided about modules
        self._rejected: weakref.WeakSet[Any] = weakref.WeakSet()
        self._discovered: weakref.WeakSet[Any] = weakref.WeakSet()
        self._deferrals: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._is_compiling = compiling_check()
        # The hook's handle and the pending modules. Taken inside Module.__init__, so it is
        # never held while calling out (nor while taking _lock); reentrant in case a
        # collection run while it is held finalises something that builds a module.
        self._arm_lock = threading.RLock()
        self._pending: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._births = 0  # a settle check disarms only if no module came while it ran
        self._handle: Any = None
        self._parked: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
        self._pending_since: dict[int, float] = {}  # when each pending module became so
        # settled for having no parameters, with when they became pending: pending again if
        # they get some (a root that was being built when a settle check saw it)
        self._empty: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self._unsettled_checks = 0
        self._closed = False
        self._next_check = 0.0
        self._interval = _SETTLE_FIRST_S
        listen(self)  # from here on every new module is seen
        module_class = torch.nn.Module
        existing = [o for o in gc.get_objects() if issubclass(type(o), module_class)]
        with self._arm_lock:
            for module in existing:
                self._pending[id(module)] = module
            self._arm()

    def close(self) -> None:
        unlisten(self)
        with self._arm_lock:
            self._closed = True
            self._disarm()
            self._pending.clear()
            self._pending_since.clear()
            self._empty = weakref.WeakKeyDictionary()
            parked = list(self._parked.values())
            self._parked = weakref.WeakKeyDictionary()
        for handles in parked:
            remove_hooks(handles)
        with self._lock:
            discovered = list(self._discovered)
            self._discovered = weakref.WeakSet()
            self._rejected = weakref.WeakSet()
        for model in discovered:
            uninstrument_model(model)

    def discovered(self) -> list[Any]:
        with self._lock:
            return list(self._discovered)

    # -- arming --------------------------------------------------------------------------
    def _arm(self) -> None:  # under _arm_lock
        if self._handle is None and not self._closed:
            import torch

            register = torch.nn.modules.module.register_module_forward_pre_hook
            self._handle = register(self._on_call)
            self._next_check, self._interval = 0.0, _SETTLE_FIRST_S

    def _disarm(self) -> None:  # under _arm_lock
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _on_born(self, module: Any) -> None:
        """``module`` was made, loaded, copied or given a parameter: it may be a root."""
        with self._arm_lock:
            self._pending[id(module)] = module
            self._pending_since[id(module)] = time.monotonic()
            self._births += 1
            self._arm()

    def _settle(self) -> None:
        """Forget settled modules; remove the global hook if none is left pending."""
        with self._arm_lock:
            births = self._births
            pending = list(self._pending.items())
            empty = list(self._empty.items())
        now, since = time.monotonic(), dict(self._pending_since)
        with self._lock:
            rejected = {id(m) for m in self._rejected}
        inside = {id(m) for root in _model.all_instrumented() for m in root.modules()}
        settled: list[tuple[int, Any]] = []
        unsettled: list[tuple[int, Any]] = []
        emptied: list[Any] = []  # no parameters (yet): looked at again by later checks
        for key, module in pending:
            if key not in rejected and key not in inside:
                if _has_parameters(module):
                    unsettled.append((key, module))
                    continue
                emptied.append(module)
            settled.append((key, module))
        # settled empty before: with parameters now (a root built since), pending again
        grown = [(m, t) for m, t in empty if id(m) not in rejected and _has_parameters(m)]
        for module, pending_since in grown:
            if id(module) not in inside:
                unsettled.append((id(module), module))
                since.setdefault(id(module), pending_since)
        self._unsettled_checks = self._unsettled_checks + 1 if unsettled else 0
        if unsettled and self._unsettled_checks >= _PARK_AFTER_CHECKS:
            young = [u for u in unsettled if now - since.get(u[0], 0.0) < _PARK_MIN_AGE_S]
            old = [u for u in unsettled if now - since.get(u[0], 0.0) >= _PARK_MIN_AGE_S]
            if old:
                parked, still_pending = self._park(old)  # e.g. a model never called
                settled += parked
                unsettled = young + still_pending
        with self._arm_lock:
            for module, pending_since in grown:
                self._empty.pop(module, None)
                if id(module) not in inside and id(module) not in self._pending:
                    self._pending[id(module)] = module  # pending again, as old as it was
                    self._pending_since[id(module)] = pending_since
            for module in emptied:
                self._empty[module] = since.get(id(module), now)
            for key, module in settled:
                if self._pending.get(key) is module:
                    del self._pending[key]
            for key in [k for k in self._pending_since if k not in self._pending]:
                del self._pending_since[key]  # settled, or collected while pending
            if unsettled:  # look again later, less often
                self._next_check = time.monotonic() + self._interval
                self._interval = min(self._interval * 2, _SETTLE_MAX_S)
            elif births != self._births:
                self._next_check = 0.0  # a module came while this ran: judge it next call
            else:
                self._disarm()

    def _park(
        self, modules: list[tuple[int, Any]]
    ) -> tuple[list[tuple[int, Any]], list[tuple[int, Any]]]:
        """Give each still-pending module a pre-hook of its own: (parked, still pending).

        A module another thread is parking right now, or whose first call unparked it while
        this ran, stays pending: the global hook must not go before its own hook is there.
        """
        parked: list[tuple[int, Any]] = []
        pending: list[tuple[int, Any]] = []
        for key, module in modules:
            with self._arm_lock:
                if self._closed:
                    continue
                claimed = self._parked.get(module)
                if claimed is not None:  # parked by another check, or being parked now
                    (parked if claimed else pending).append((key, module))
                    continue
                self._parked[module] = []  # claimed: another settle check waits for it
            handles = register_hooks(module, self._on_parked_call)
            with self._arm_lock:
                if self._parked.get(module) is not None and not self._closed:
                    self._parked[module] = handles
                    parked.append((key, module))
                    continue
            remove_hooks(handles)  # unparked by its first call (or closed) meanwhile
            pending.append((key, module))
        return parked, pending

    def _on_parked_call(self, module: Any, args: Any, _kwargs: Any) -> None:
        """A parked module is called: pending again, and judged now (the global hook, back
        from here on, was not there when this call began)."""
        if self._is_compiling():
            return
        try:
            with self._arm_lock:
                handles = self._parked.pop(module, None)
            if handles:
                remove_hooks(handles)
            if self._closed or _threads.forward_depth():
                return  # inside an instrumented forward: settled, nothing to judge
            self._on_born(module)
            self._on_call(module, args)
        except Exception as exc:
            report_internal_error("discovery", exc)

    # -- the global pre-hook -----------------------------------------------------------------
    def _on_call(self, module: Any, args: Any) -> None:
        if (
            self._is_compiling()
            or _threads.forward_depth()
            or getattr(module, "_is_replica", False)
        ):
            return
        try:
            if module in self._rejected:
                return
            if _model.instrumentation_of(module) is not None:  # steady state
                if time.monotonic() >= self._next_check:
                    self._settle()
                return
            with self._lock:
                if not self._judge(module):
                    return
                withdrawn = self._fold_into(module)
                instrument_model(module, _base_config=self._config)
                self._discovered.add(module)
            self._next_check = 0.0  # its modules just settled: check at its next call
            for inner in withdrawn:
                uninstrument_model(inner)
            instrumentation = _model.instrumentation_of(module)
            if instrumentation is not None:  # registered too late to run for this call
                instrumentation.on_nested = self._withdraw_nested
                instrumentation._root_pre(module, args, {})
        except Exception as exc:
            report_internal_error("discovery", exc)

    def _judge(self, module: Any) -> bool:
        """True if ``module`` is a root; otherwise remember why not (or judge it later)."""
        if not _has_parameters(module) or _is_wrapper(module):
            self._rejected.add(module)
            return False
        outer = _outer_running_directly(module)
        if outer is None:
            return True
        seen = self._deferrals[module] = self._deferrals.get(module, 0) + 1
        if seen >= _MAX_DEFERRALS:
            self._rejected.add(module)
            name = type(outer).__qualname__
            warn_once(
                f"direct-forward:{name}",
                "visiontel.torch: %s runs its forward directly (model.forward(x)), so it "
                "cannot be traced as a whole; call model(x), or instrument it with "
                "visiontel.torch.instrument_model(model)",
                name,
            )
        return False

    def _fold_into(self, root: Any) -> list[Any]:
        inside = {id(m) for m in root.modules()}
        withdrawn = [m for m in self._discovered if m is not root and id(m) in inside]
        for model in withdrawn:
            self._discovered.discard(model)
            self._rejected.add(model)
        return withdrawn

    def _withdraw_nested(self, module: Any) -> None:
        """A discovered root ran inside another instrumented forward: it is not a root."""
        with self._lock:
            self._discovered.discard(module)
            self._rejected.add(module)
        uninstrument_model(module)


def _has_parameters(module: Any) -> bool:
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        return False
    return next(module.parameters(), None) is not None


def _is_wrapper(module: Any) -> bool:
    """No parameters of its own and all of them in one child (not a parallel or compiled one)."""
    import torch

    parallel = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    if isinstance(module, parallel) or is_compiled(module):
        return False
    if next(module.parameters(recurse=False), None) is not None:
        return False
    holders = [c for c in module.children() if next(c.parameters(), None) is not None]
    containers = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)
    return len(holders) == 1 and not isinstance(holders[0], containers)


def _outer_running_directly(module: Any) -> Any:
    """A module containing ``module`` whose method is on the stack without its ``__call__``."""
    import torch

    module_file = torch.nn.modules.module.__file__
    own_prefix = __name__.rsplit(".", 1)[0]
    running: list[Any] = []  # ancestors seen in their own methods' frames
    called: set[int] = set()  # ancestors seen inside Module._call_impl
    frame: FrameType | None = sys._getframe(1)
    for _ in range(_MAX_FRAMES):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if isinstance(owner, torch.nn.Module) and owner is not module:
            if frame.f_code.co_filename == module_file:
                called.add(id(owner))
            elif not frame.f_globals.get("__name__", "").startswith(own_prefix):
                running.append(owner)
        frame = frame.f_back
    for owner in running:
        if id(owner) not in called and any(m is module for m in owner.modules()):
            return owner
    return None
