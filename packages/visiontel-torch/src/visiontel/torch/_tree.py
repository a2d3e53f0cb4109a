"""Which of a model's modules get child probes, kept right while the model changes.

* **Stage containers.** At stage granularity the probes sit on the model's direct children.
  A child that is a plain container (``Sequential``, ``ModuleList``, ``ModuleDict``) may
  never be called as a whole: Ultralytics' ``DetectionModel`` iterates its ``model``
  ``Sequential`` and calls each layer. Such a container and its elements are both probed
  until the first sampled forward ends, the elements stamping only outside the container;
  then the probes that did not stamp go, and those that stay stop asking whether a
  container is open.
* **Replaced modules.** ``fuse()`` swaps Conv+BN for one conv; other code swaps heads.
  At most once every ``CHECK_INTERVAL_NS`` a sampled forward checks that every probed name
  still leads to the module probed under it, and rebuilds the probes when one does not.
"""

from __future__ import annotations

import fnmatch
import threading
import time
from collections.abc import Callable
from typing import Any

from visiontel.torch._config import Granularity, TorchConfig
from visiontel.torch._probes import ChildProbes, needs_hooks
from visiontel.torch._record import ModuleTable

CHECK_INTERVAL_NS = 1_000_000_000


class ProbeTree:
    """The probed modules of one model: ``table`` names them, ``probes`` stamps them."""

    def __init__(
        self, model: Any, config: TorchConfig, state: Any, is_compiling: Callable[[], bool]
    ) -> None:
        self._config, self._state, self._is_compiling = config, state, is_compiling
        self._model_name = config.model_name or type(model).__name__
        self._lock = threading.Lock()
        self._build(model)

    def _build(self, model: Any) -> None:
        chosen, elements = select_children(model, self._config)
        entries = list(chosen)
        pending: dict[int, list[int]] = {}
        for container, inner in elements.items():
            pending[container] = list(range(len(entries), len(entries) + len(inner)))
            entries.extend(inner)
        granularity = self._config.granularity
        self.table = ModuleTable(
            names=tuple(name for name, _ in entries),
            classes=tuple(type(module).__qualname__ for _, module in entries),
            model_name=self._model_name,
            budget=self._config.max_layer_spans if granularity is Granularity.LAYER else 1 << 30,
            gpu_timeout_s=self._config.gpu_timeout_s,
        )
        self.probes = ChildProbes(self._state, self._is_compiling, use_hooks=needs_hooks(model))
        roles = {c: "container" for c in pending}
        roles.update((e, "element") for indices in pending.values() for e in indices)
        for index, (_, module) in enumerate(entries):
            self.probes.add(index, module, roles.get(index, ""))
        self._entries = entries
        self._probed = list(range(len(entries)))
        self._pending = pending
        # check() returns at once before this (the compiled root hooks read it too)
        self.next_check_ns = time.perf_counter_ns() + CHECK_INTERVAL_NS

    def check(self, model: Any, now_ns: int) -> None:
        """Rebuild when a probed module was replaced (called before a sampled forward)."""
        if now_ns < self.next_check_ns:
            return
        self.next_check_ns = now_ns + CHECK_INTERVAL_NS
        with self._lock:
            if self._matches(model):
                return
            old = self.probes
            self._build(model)
        old.clear()  # a forward still running on another thread just stops stamping

    def _matches(self, model: Any) -> bool:
        for index in self._probed:
            name, module = self._entries[index]
            try:
                if model.get_submodule(name) is not module:
                    return False
            except AttributeError:
                return False
        return True

    def seen(self, stamps: list[Any]) -> None:
        """After a sampled forward: keep either each container's probe or its elements'."""
        if not self._pending:
            return
        fired = {stamp[0] for stamp in stamps if stamp[0] >= 0}
        with self._lock:
            for container, indices in list(self._pending.items()):
                del self._pending[container]
                called_whole = container in fired
                for index in indices if called_whole else (container,):
                    self.probes.drop(index)
                    self._probed.remove(index)
                for index in (container,) if called_whole else indices:
                    self.probes.settle(index, self._entries[index][1])

    def clear(self) -> None:
        self.probes.clear()


def select_children(
    model: Any, config: TorchConfig
) -> tuple[list[tuple[str, Any]], dict[int, list[tuple[str, Any]]]]:
    """The probed modules in registration order, and the elements of stage containers."""
    import torch

    if config.granularity is Granularity.MODEL:
        return [], {}
    if config.granularity is Granularity.STAGE:
        chosen = _filtered(list(model.named_children()), config)
        containers = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)
        elements = {}
        for index, (name, module) in enumerate(chosen):
            if isinstance(module, containers):
                inner = [(f"{name}.{n}", m) for n, m in module.named_children()]
                elements[index] = _filtered(inner, config)
        return chosen, {k: v for k, v in elements.items() if v}
    candidates = []
    compiled: list[str] = []  # torch.compile'd submodules: their insides run compiled
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix) for prefix in compiled):
            continue
        depth = name.count(".") + 1
        is_leaf = next(module.children(), None) is None
        if is_compiled(module):
            compiled.append(name + ".")
            is_leaf = True  # probe the compiled call's boundary, as for the root
        limit = config.layer_depth
        if (limit is None and is_leaf) or (
            limit is not None and (depth == limit or (is_leaf and depth < limit))
        ):
            candidates.append((name, module))
    return _filtered(candidates, config), {}


def _filtered(candidates: list[tuple[str, Any]], config: TorchConfig) -> list[tuple[str, Any]]:
    chosen = []
    for name, module in candidates:
        if config.include and not any(fnmatch.fnmatchcase(name, p) for p in config.include):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in config.exclude):
            continue
        chosen.append((name, module))
    return chosen


def is_compiled(module: Any) -> bool:
    """torch.compile'd (OptimizedModule) or TorchScript: no Python runs inside it."""
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        return True
    return hasattr(module, "_orig_mod") and hasattr(module, "dynamo_ctx")
