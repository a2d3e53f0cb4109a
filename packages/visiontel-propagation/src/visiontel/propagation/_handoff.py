"""Hand-off of the current context to threads, executors, event loops and processes.

Threads and executors run code without the submitter's OpenTelemetry context
(``loop.run_in_executor`` and ``Executor.submit`` do not copy it); processes need it
serialised. These helpers capture the context where work is handed over and
restore it where the work runs, so users never pass contexts by hand.

Between processes the context travels in an envelope of this package, both of whose
ends are visiontel: it is always W3C-encoded (like the shared-memory slot), whatever
``OTEL_PROPAGATORS`` says, so a hand-off never depends on the propagators configured
(``OTEL_PROPAGATORS=none`` or ``b3`` included) and loses no baggage.
"""

from __future__ import annotations

import functools
import importlib
import multiprocessing
import queue as queue_module
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

from opentelemetry import context as otel_context
from opentelemetry.context import Context

from visiontel.propagation._carriers import extract_w3c_dict, inject_w3c_dict
from visiontel.propagation._diag import reject

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def bind(fn: Callable[P, R], context: Context | None = None) -> Callable[P, R]:
    """``fn`` run under ``context`` (default: the current one, captured now).

    Use wherever work crosses to another thread: ``threading.Thread(target=bind(f))``,
    ``loop.run_in_executor(None, bind(f), x)``. The bound callable may run on several
    threads at once.
    """
    captured = otel_context.get_current() if context is None else context

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        token = otel_context.attach(captured)
        try:
            return fn(*args, **kwargs)
        finally:
            otel_context.detach(token)

    return run


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose tasks run under their submitter's context.

    Make it asyncio's default executor and ``run_in_executor(None, ...)`` propagates
    too: ``loop.set_default_executor(ContextThreadPoolExecutor())``.
    """

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        return super().submit(bind(fn), *args, **kwargs)


def _run_with_carrier(
    carrier: dict[str, str], fn: Callable[..., R], *args: Any, **kwargs: Any
) -> R:
    token = otel_context.attach(extract_w3c_dict(carrier))
    try:
        return fn(*args, **kwargs)
    finally:
        otel_context.detach(token)


class ContextProcessPoolExecutor(ProcessPoolExecutor):
    """A ``ProcessPoolExecutor`` whose tasks run under their submitter's context.

    The context travels as a small dict of W3C fields next to the pickled call (W3C
    whatever ``OTEL_PROPAGATORS`` says: both ends are this package).
    """

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        carrier: dict[str, str] = {}
        inject_w3c_dict(carrier)
        return super().submit(_run_with_carrier, carrier, fn, *args, **kwargs)


class _QueueLike(Protocol):
    def put(self, item: Any, block: bool = ..., timeout: float | None = ...) -> None: ...
    def get(self, block: bool = ..., timeout: float | None = ...) -> Any: ...


_TAG = "visiontel/1"


class ContextQueue(Generic[T]):
    """Wraps a queue so every item carries the context it was put under.

    Works over ``queue.Queue``, ``multiprocessing`` and ``torch.multiprocessing``
    queues (fork or spawn; pass the wrapper to the child like the queue itself).
    ``put`` injects the current context into a small dict sent with the item;
    ``get`` returns ``(item, context)``. An item that was put on the inner
    queue directly comes back with an empty context (counted, never an error).
    """

    def __init__(self, inner: _QueueLike) -> None:
        self.inner = inner

    def put(
        self,
        item: T,
        block: bool = True,
        timeout: float | None = None,
        *,
        context: Context | None = None,
    ) -> None:
        carrier: dict[str, str] = {}
        inject_w3c_dict(carrier, context)
        self.inner.put((_TAG, carrier, item), block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> tuple[T, Context]:
        """``(item, context)``: the next item and the context it was put under."""
        raw = self.inner.get(block, timeout)
        if isinstance(raw, tuple) and len(raw) == 3 and raw[0] == _TAG:
            return raw[2], extract_w3c_dict(raw[1])
        reject("queue", "not_enveloped", type(raw))
        return raw, Context()

    def put_nowait(self, item: T, *, context: Context | None = None) -> None:
        self.put(item, False, context=context)

    def get_nowait(self) -> tuple[T, Context]:
        return self.get(False)


def multiprocessing_queue(
    maxsize: int = 0, method: str | None = None, *, torch: bool = False
) -> ContextQueue[Any]:
    """A :class:`ContextQueue` over a (``torch.``)``multiprocessing`` queue.

    ``method`` is the start method ("fork", "spawn", "forkserver"; default: the
    platform's). ``torch=True`` uses ``torch.multiprocessing`` (imported only then),
    whose queues move tensors through shared memory.
    """
    if torch:
        try:
            mp_module = importlib.import_module("torch.multiprocessing")
        except ImportError as error:
            raise ImportError(
                "multiprocessing_queue(torch=True) needs PyTorch: pip install torch"
            ) from error
        mp_context: Any = mp_module.get_context(method)
    else:
        mp_context = multiprocessing.get_context(method)
    return ContextQueue(mp_context.Queue(maxsize))


Empty = queue_module.Empty
"""Raised by ``get(block=False)`` / a timed-out ``get`` on an empty queue."""
