"""Every use of an OpenTelemetry SDK internal of visiontel-torch's own, and its view of the
one gate.

The live spans' fast path (``FastPath``, the batch queue, the gate ``fast_path_for``) is
visiontel-support's, shared with visiontel-propagation (``visiontel._support._otel_private``);
this module names it for the package, with visiontel-torch's instrumentation scope. What is
visiontel-torch's alone is the histogram fold (``_histograms.py``): a batch of a forward's
duration or detection points added straight to the SDK's storage, with the exemplars the SDK
would keep. It opens where that gate's SDK version check opens, and is shut with it by
``_use_public_api``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from visiontel._support import _otel_private as _shared
from visiontel._support._otel_private import RATIO_TRACE_ID_MASK as RATIO_TRACE_ID_MASK
from visiontel._support._otel_private import SAMPLED as SAMPLED
from visiontel._support._otel_private import TESTED_SDK as TESTED_SDK
from visiontel._support._otel_private import FastPath as FastPath
from visiontel._support._otel_private import batch_queue_fill as batch_queue_fill
from visiontel._support._otel_private import sdk_version_supported as sdk_version_supported
from visiontel.torch._otel_private._histograms import fold as _fold
from visiontel.torch.version import SCHEMA_URL, __version__

TORCH_SCOPE = ("visiontel.torch", __version__, SCHEMA_URL)
"""(name, version, schema URL) of the instrumentation scope spans are made for, by default."""


def _use_public_api(force: bool) -> None:
    """Tests only: shut (or reopen) the gate for every provider from now on."""
    _shared.use_public_api(force)


def _reset_version_check() -> None:
    """Tests only: check the installed version again."""
    _shared.reset_version_check()


def fast_path_for(provider: Any, scope: tuple[str, str, str] = TORCH_SCOPE) -> FastPath | None:
    """The fast path for ``provider``'s spans of ``scope``, or ``None`` where the public API
    must be used (the shared gate, ``visiontel._support._otel_private.fast_path_for``)."""
    return _shared.fast_path_for(provider, scope)


def fold_points(
    histogram: Any,
    values: Sequence[float],
    attributes: Mapping[str, Any],
    contexts: Sequence[Any],
    memo: dict[str, Any],
) -> bool:
    """Add a batch of ``histogram`` values that share ``attributes`` straight to the SDK's
    storage, with the exemplars the SDK would keep; False (nothing added) where
    ``histogram.record`` must be used instead. ``contexts``: the one context every value
    was recorded in, or one per value. ``memo``: a dict the caller keeps per histogram and
    attribute set. See ``_histograms.py``."""
    if _shared.public_api_forced() or not sdk_version_supported():
        return False
    try:
        return _fold(histogram, values, attributes, contexts, memo)
    except (AttributeError, TypeError):  # an SDK without the pieces used there
        return False
