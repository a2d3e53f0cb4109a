"""``--canary-fault``: break the canary model on purpose, so the canary gates have something
to catch (collector-config/canary/, docs/collector.md).

Each fault is a failure a real release can have, made inside the model so that the
telemetry sees it as it would see the real one:

* ``overdetect``: a score threshold left far too low (a model exported with the wrong
  confidence setting). The model returns many more boxes; NMS, which now sorts through
  them, also gets slower.
* ``slow``: a forward that takes ``SLOW_S`` longer (a slower kernel, a CPU fallback). The
  delay is a sleep inside ``forward``, between visiontel-torch's hooks, so the inference
  span and ``visiontel.inference.duration`` include it; it costs no CPU.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from torch import nn

SLOW_S = 0.04
"""Added to each forward of a ``slow`` canary: ~4x tinydet's forward on one core."""
OVERDETECT_SCORE = 0.02
"""Score threshold of an ``overdetect`` tinydet canary (the healthy one keeps boxes from
0.3): most cells pass, NMS keeps up to the model's limit. SSDlite's threshold goes to 0."""


def inject(fault: str, module: nn.Module) -> None:
    """Apply ``fault`` (a key of ``_config.FAULTS``) to one model version's module."""
    if fault == "slow":
        forward = module.forward

        @functools.wraps(forward)
        def slow_forward(*args: Any, **kwargs: Any) -> Any:
            time.sleep(SLOW_S)
            return forward(*args, **kwargs)

        # An instance attribute: nn.Module.__call__ runs it between the forward hooks.
        module.forward = slow_forward
    elif fault == "overdetect":
        nms = getattr(module, "nms", None)
        if nms is not None:  # tinydet
            nms.score_threshold = OVERDETECT_SCORE
        else:  # torchvision's SSD: the threshold its postprocess applies
            module.score_thresh = 0.0  # type: ignore[assignment]
    else:
        raise ValueError(f"unknown fault {fault!r}")
