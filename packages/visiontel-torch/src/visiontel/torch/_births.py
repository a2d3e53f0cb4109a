"""Module births: ``nn.Module.__init__``, ``__setstate__`` and ``register_parameter``,
wrapped on the class while zero-code discovery is open (``_discovery.py``).

Wrapped on the class, so instances (and so copies and pickles) carry nothing. The wrappers
are installed once, whatever the number of listeners, and put back on the last ``unlisten``
unless someone wrapped them in turn (torch._dynamo does, for good): ours then stay in
their chain, inert, and are reused by the next listener.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, Protocol

from visiontel.torch._safety import report_internal_error

WRAPPED_METHODS = ("__init__", "__setstate__", "register_parameter")


class Listener(Protocol):
    def _on_born(self, module: Any) -> None:
        """``module`` was made, loaded, copied or given a parameter."""


_listeners: tuple[Listener, ...] = ()  # replaced, never mutated: the wrappers read it unlocked
_wrapped: dict[str, tuple[Any, Any]] = {}  # name: (the function we wrapped, our wrapper)
_wrap_lock = threading.Lock()


def listen(listener: Listener) -> None:
    global _listeners
    import torch

    with _wrap_lock:
        _listeners = (*_listeners, listener)
        for name in WRAPPED_METHODS:
            if name not in _wrapped:
                original = torch.nn.Module.__dict__[name]
                wrapper = _tell_listeners_after(original)
                _wrapped[name] = (original, wrapper)
                setattr(torch.nn.Module, name, wrapper)


def unlisten(listener: Listener) -> None:
    global _listeners
    import torch

    with _wrap_lock:
        _listeners = tuple(other for other in _listeners if other is not listener)
        if _listeners:
            return
        for name, (original, wrapper) in list(_wrapped.items()):
            if torch.nn.Module.__dict__.get(name) is wrapper:
                setattr(torch.nn.Module, name, original)
                del _wrapped[name]


def _tell_listeners_after(original: Callable[..., Any]) -> Callable[..., Any]:
    import torch

    # A module built inside a region torch.compile traces: tracing our locks would only
    # break the graph, and what runs there compiled is not called through a hook anyway.
    compiling: Callable[[], bool] = getattr(torch.compiler, "is_compiling", lambda: False)

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        listeners = _listeners
        if listeners and not compiling():
            try:
                for listener in listeners:
                    listener._on_born(self)
            except Exception as exc:  # never break building or loading a module
                report_internal_error("discovery bookkeeping", exc)
        return result

    return wrapper
