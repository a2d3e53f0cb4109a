"""The compiled loops (``csrc/``) where they were built, else pure Python.

visiontel-torch's wheel carries a small C extension for what runs once per layer at layer
granularity: the armed forward wrapper that stamps a child module's call (and the
per-thread record it reads), arming and disarming a model's wrappers, and the builder of a
forward's finished layer spans; for the root hooks of a one-tensor CPU forward (its
record, and its root span where sampled); and for a sampled ``stage()`` block's entry and
exit.
Where it was not built (no compiler when installing from source, another interpreter) or
``VISIONTEL_TORCH_PURE_PYTHON=true`` is set, the pure-Python versions in ``_probes.py``,
``_resolver.py``, ``_model.py`` and ``_stage.py`` run: same stamps, spans and points
(``tests/test_speedups.py``, ``test_dropped_roots.py``, ``test_sampled_roots.py`` and
``test_compiled_stages.py`` compare them), about twice the per-layer cost.
"""

from __future__ import annotations

import logging
from types import ModuleType

from visiontel._support.env import env_bool

ENV_PURE_PYTHON = "VISIONTEL_TORCH_PURE_PYTHON"

_logger = logging.getLogger("visiontel.torch")


def _load() -> ModuleType | None:
    if env_bool(ENV_PURE_PYTHON, False):
        return None
    try:
        from visiontel.torch import _speedups  # type: ignore[attr-defined]
    except ImportError as exc:
        _logger.debug("visiontel-torch's compiled loops are not available (%s): pure Python", exc)
        return None
    return _speedups  # type: ignore[no-any-return]


speedups: ModuleType | None = _load()
"""``visiontel.torch._speedups``, or None where the pure-Python loops run."""
