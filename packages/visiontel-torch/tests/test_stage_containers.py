"""Stage containers on trial (``_tree.py``): a ``Sequential`` child is probed together with
its elements until the first sampled forward shows which of them run. Afterwards the same
spans come, and no probe asks any more whether a container is open: the trial's wrappers
(a Python frame per layer call) are gone, with the compiled loops and the pure ones."""

from __future__ import annotations

import collections
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest
import torch

from torch_support import Telemetry, loops

TRIAL_WRAPPERS = {"container_forward", "element_forward"}


class Iterating(torch.nn.Module):
    """Calls each layer of its ``body`` in turn, never ``body`` itself (as Ultralytics'
    ``DetectionModel`` runs its ``model``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 1)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), torch.nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.body:
            x = layer(x)
        return x


class Whole(Iterating):
    """Calls ``body`` as a whole."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))  # type: ignore[no-any-return]


@pytest.fixture(params=["compiled", "pure"])
def chosen_loops(request: pytest.FixtureRequest) -> Iterator[str]:
    chosen = request.getfixturevalue("compiled") if request.param == "compiled" else None
    with loops(chosen):
        yield request.param


def _python_calls(model: torch.nn.Module) -> collections.Counter[str]:
    calls: collections.Counter[str] = collections.Counter()

    def profile(frame: FrameType, event: str, _arg: Any) -> None:
        if event == "call":
            calls[frame.f_code.co_name] += 1

    sys.setprofile(profile)
    try:
        model(torch.randn(1, 3, 8, 8))
    finally:
        sys.setprofile(None)
    return calls


@pytest.mark.parametrize(
    ("model_class", "spans"),
    [(Iterating, {"stem", "body.0", "body.1"}), (Whole, {"stem", "body"})],
)
def test_after_the_trial_the_same_spans_come_without_its_wrappers(
    telemetry: Telemetry, chosen_loops: str, model_class: type[torch.nn.Module], spans: set[str]
) -> None:
    model = telemetry.instrument(model_class(), name="m", granularity="stage")
    with torch.inference_mode():
        on_trial = _python_calls(model)
        first = {s.name for s in telemetry.spans()} - {"inference m"}
        telemetry.exporter.clear()
        settled = _python_calls(model)
        second = {s.name for s in telemetry.spans()} - {"inference m"}
    assert first == second == spans
    assert TRIAL_WRAPPERS & set(on_trial)  # the trial ran through them
    assert not TRIAL_WRAPPERS & set(settled), settled
