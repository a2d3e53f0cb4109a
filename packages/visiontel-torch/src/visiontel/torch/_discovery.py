"""Zero-code discovery: find each model's true root on its first call.

One global forward pre-hook sees every module call made while no instrumented forward runs
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
"""

from __future__ import annotations

import sys
import threading
import weakref
from types import FrameType
from typing import Any

from visiontel.torch import _model
from visiontel.torch._api import instrument_model, uninstrument_model
from visiontel.torch._config import TorchConfig
from visiontel.torch._safety import report_internal_error, warn_once
from visiontel.torch._tree import is_compiled

_MAX_DEFERRALS = 3
_MAX_FRAMES = 64


class Discovery:
    """The global hook and what it has decided; ``close()`` undoes all of it."""

    def __init__(self, config: TorchConfig) -> None:
        import torch

        self._config = config
        self._lock = threading.Lock()
        self._rejected: weakref.WeakSet[Any] = weakref.WeakSet()
        self._discovered: weakref.WeakSet[Any] = weakref.WeakSet()
        self._deferrals: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._is_compiling = _model.is_compiling_fn()
        register = torch.nn.modules.module.register_module_forward_pre_hook
        self._handle: Any = register(self._on_call)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        with self._lock:
            discovered = list(self._discovered)
            self._discovered = weakref.WeakSet()
            self._rejected = weakref.WeakSet()
        for model in discovered:
            uninstrument_model(model)

    def discovered(self) -> list[Any]:
        with self._lock:
            return list(self._discovered)

    # -- the global pre-hook -----------------------------------------------------------------
    def _on_call(self, module: Any, args: Any) -> None:
        if self._is_compiling() or _model.forward_depth() or getattr(module, "_is_replica", False):
            return
        try:
            if module in self._rejected or _model.instrumentation_of(module) is not None:
                return
            with self._lock:
                if not self._judge(module):
                    return
                withdrawn = self._fold_into(module)
                instrument_model(module, _base_config=self._config)
                self._discovered.add(module)
            for inner in withdrawn:
                uninstrument_model(inner)
            instrumentation = _model.instrumentation_of(module)
            if instrumentation is not None:  # this call already passed the root pre-hook
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
