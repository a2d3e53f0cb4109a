"""Every use of torch's private module internals, behind one gate.

visiontel's hooks must never travel with a model: ``copy.deepcopy``, ``pickle``,
``torch.save`` and spawn workers copy a module's instance dictionary, hook dictionaries
included, and our hooks hold locks and thread-local state. So the hook dictionaries of a
model we instrument are replaced, while still empty, by :class:`HookTable`: an
``OrderedDict`` that reduces to a plain ``OrderedDict`` *without* the entries visiontel
registered. A copy or an unpickled module is then a clean, uninstrumented module, and a
checkpoint saved from an instrumented model loads where visiontel is not installed.

This rests on torch internals (the five hook dictionaries' attribute names, and
``RemovableHandle`` keeping a weak reference to the dictionary it registered into), so
:func:`private_hooks_usable` checks them once on the installed torch. Where the check fails,
or a dictionary already holds someone else's hooks (swapping it would orphan their
``RemovableHandle``), hooks go through the public API only, wrapped so that a copy carries
an inert stand-in (:func:`inert_hook`) instead of failing.

``ParkedHook`` (the hook probes of ``DataParallel`` trees) also reads the handle's private
references, and ``compiling_check`` reads ``torch.compiler._is_compiling_flag`` and calls
``torch._C._is_tracing``, behind the same gate; their fall-backs re-register a hook on every
arm and call ``torch.compiler.is_compiling`` and ``torch.jit.is_tracing``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

_logger = logging.getLogger("visiontel.torch")

# The five dictionaries ``Module.register_forward_(pre_)hook`` writes into (torch >= 2.1).
HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)

_own_ids: set[int] = set()  # ids of the hooks visiontel registered (ids are process-unique)
_lock = threading.Lock()


class HookTable(OrderedDict):  # type: ignore[type-arg]
    """A hook dictionary whose copies and pickles leave out visiontel's entries.

    Its ``values()`` leave them out too. torch's call path reads ``items()``; what reads
    ``values()`` copies or compiles a module's hooks elsewhere: ``torch.jit.script`` (which
    would fail on our Python hooks; a scripted module runs no Python hooks anyway) and
    ``torch.ao`` fusing and conversion (which would re-register them without their
    keyword-argument flags).
    """

    def values(self) -> Any:
        with _lock:
            own = set(_own_ids)
        return [value for key, value in self.items() if key not in own]

    def __reduce_ex__(self, protocol: Any) -> Any:
        items = [(key, value) for key, value in self.items() if key not in _own_ids]
        return (OrderedDict, (), None, None, iter(items))

    def __reduce__(self) -> Any:
        return self.__reduce_ex__(2)


def inert_hook(*_args: Any) -> None:
    """What a copied visiontel hook becomes on the public-API fall-back: nothing."""


class _CopiesInert:
    """A hook callable that copies and pickles as :func:`inert_hook` (the fall-back)."""

    __slots__ = ("_function",)

    def __init__(self, function: Callable[..., Any]) -> None:
        self._function = function

    def __call__(self, *args: Any) -> Any:
        return self._function(*args)

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (_inert, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return inert_hook


def _inert() -> Callable[..., None]:
    return inert_hook


def _own_hook_dicts(module: Any) -> bool:
    """Put HookTables in place of ``module``'s hook dictionaries; False if that is unsafe."""
    tables = [module.__dict__.get(name) for name in HOOK_DICTS]
    if all(type(table) is HookTable for table in tables):
        return True
    if any(
        not isinstance(table, dict) or (table and type(table) is not HookTable) for table in tables
    ):
        return False  # missing, or holding someone else's hooks (their handles point at it)
    for name, table in zip(HOOK_DICTS, tables, strict=True):
        if type(table) is not HookTable:
            module.__dict__[name] = HookTable()
    return True


def register_hooks(
    module: Any, pre: Callable[..., Any], post: Callable[..., Any] | None = None
) -> list[Any]:
    """Register a kwargs pre-hook and (if given) an always-called kwargs post-hook that never
    travel with a copy."""
    owned = private_hooks_usable() and _own_hook_dicts(module)
    if not owned:
        pre = _CopiesInert(pre)
        post = None if post is None else _CopiesInert(post)
    handles = [module.register_forward_pre_hook(pre, with_kwargs=True)]
    if post is not None:
        handles.append(module.register_forward_hook(post, with_kwargs=True, always_call=True))
    if owned:
        with _lock:
            _own_ids.update(handle.id for handle in handles)
    return handles


def remove_hooks(handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()
        with _lock:
            _own_ids.discard(handle.id)
    handles.clear()


class ParkedHook:
    """A hook registered once and switched on and off with a few dictionary stores."""

    __slots__ = ("_extra", "_function", "_handle", "_hooks", "_id", "_module", "_post")

    def __init__(self, module: Any, function: Callable[..., None], post: bool) -> None:
        self._module, self._function, self._post = module, function, post
        self._handle: Any = None
        self._hooks: dict[int, Any] | None = None
        self._extra: list[dict[int, Any]] = []
        self._id = -1
        if not (private_hooks_usable() and _own_hook_dicts(module)):
            return  # public fall-back: register on every arm, remove on every disarm
        handle = self._register()
        hooks = handle.hooks_dict_ref()
        if hooks is None:
            return
        # keep the dictionaries the handle points at, then take the hook out again
        self._extra = [d for d in (ref() for ref in handle.extra_dict_ref) if d and handle.id in d]
        self._hooks, self._id = hooks, handle.id
        handle.remove()
        with _lock:
            _own_ids.add(handle.id)

    def _register(self) -> Any:
        if self._post:
            return self._module.register_forward_hook(self._function, always_call=True)
        return self._module.register_forward_pre_hook(self._function)

    def arm(self) -> None:
        if self._hooks is None:
            if self._handle is None:
                self._handle = self._register()
            return
        self._hooks[self._id] = self._function
        for extra in self._extra:
            extra[self._id] = True

    def disarm(self) -> None:
        if self._hooks is None:
            if self._handle is not None:
                self._handle.remove()
                self._handle = None
            return
        self._hooks.pop(self._id, None)
        for extra in self._extra:
            extra.pop(self._id, None)

    def forget(self) -> None:
        self.disarm()
        with _lock:
            _own_ids.discard(self._id)


def compiling_check() -> Callable[[], bool]:
    """True while torch.compile, torch.export or torch.jit.trace runs the model (hooks then
    stay silent), in as few Python frames as the installed torch allows.

    Every hook calls it, and after a forward each frame costs several times its warm cost.
    ``torch.compiler.is_compiling()`` is two frames (it asks ``torch.jit.is_scripting()``,
    never true where Python runs, then reads ``_is_compiling_flag``). Behind the gate this
    asks ``is_dynamo_compiling()`` (which Dynamo folds to True as it does
    ``is_compiling()``, so a traced hook stays a no-op), reads that flag itself (torch.export
    sets it) and calls ``torch._C._is_tracing`` (``torch.jit.is_tracing`` without its
    frame).
    """
    import torch

    compiler = torch.compiler
    dynamo_compiling = getattr(compiler, "is_dynamo_compiling", None)
    tracing = getattr(torch._C, "_is_tracing", None)
    if (
        private_hooks_usable()
        and isinstance(getattr(compiler, "_is_compiling_flag", None), bool)
        and callable(dynamo_compiling)
        and callable(tracing)
    ):

        def compiling_or_tracing() -> bool:
            # Dynamo first: it folds that call to True and never reads the flag, whose read
            # it does not trace (on torch 2.15 the hook then runs for real, outside the graph).
            return dynamo_compiling() or compiler._is_compiling_flag or tracing()

        return compiling_or_tracing
    public_tracing: Callable[[], bool] = torch.jit.is_tracing  # type: ignore[attr-defined]

    def public_compiling_or_tracing() -> bool:
        return compiler.is_compiling() or public_tracing()

    return public_compiling_or_tracing


def dynamo_check() -> Callable[[], bool]:
    """True while Dynamo traces the code that calls it (it folds the call to True), for a
    hook whose body Dynamo must see as a no-op and that is otherwise harmless to run:
    one Python frame, where ``compiling_check()`` is two and a call into ``torch._C``."""
    import torch

    dynamo_compiling = getattr(torch.compiler, "is_dynamo_compiling", None)
    if callable(dynamo_compiling):
        return dynamo_compiling  # type: ignore[no-any-return]
    return torch.compiler.is_compiling


@functools.cache
def private_hooks_usable() -> bool:
    """The gate: do torch's hook dictionaries behave as this module assumes?"""
    reason = "torch hook internals differ"
    try:
        ok = _check_private_hooks()
    except Exception as exc:  # any surprise means: use the public API
        ok, reason = False, repr(exc)
    if not ok:
        _logger.debug("visiontel.torch: using the public hook API (%s)", reason)
    return ok and not _forced_public


_forced_public = False


def _check_private_hooks() -> bool:
    import torch

    module = torch.nn.Linear(1, 1)
    if not all(isinstance(module.__dict__.get(name), dict) for name in HOOK_DICTS):
        return False
    if not _own_hook_dicts(module):
        return False
    # No forward runs here: the gate may be consulted from inside the discovery hook.
    handles = [
        module.register_forward_pre_hook(inert_hook, with_kwargs=True),
        module.register_forward_hook(inert_hook, with_kwargs=True, always_call=True),
    ]
    for handle in handles:
        if type(handle.hooks_dict_ref()) is not HookTable:
            return False
        if not all(ref() is None or type(ref()) is HookTable for ref in handle.extra_dict_ref):
            return False
    with _lock:
        _own_ids.update(h.id for h in handles)
    try:
        registered = all(any(h.id in module.__dict__[n] for n in HOOK_DICTS) for h in handles)
        clone = copy.deepcopy(module)
        clean = not any(clone.__dict__[name] for name in HOOK_DICTS)
    finally:
        for handle in handles:
            handle.remove()
        with _lock:
            _own_ids.difference_update(h.id for h in handles)
    return registered and clean and not any(module.__dict__[n] for n in HOOK_DICTS)


@contextlib.contextmanager
def force_public_api(value: bool = True) -> Iterator[None]:
    """Run the public-API fall-back inside the block (its tests)."""
    global _forced_public
    previous = _forced_public
    _forced_public = value
    private_hooks_usable.cache_clear()
    try:
        yield
    finally:
        _forced_public = previous
        private_hooks_usable.cache_clear()
