"""The torch matrix runs the torch each nox session pinned (a test extra must not upgrade it)."""

from __future__ import annotations

import os

import pytest
import torch


def test_the_session_runs_the_torch_it_pinned() -> None:
    pinned = os.environ.get("VISIONTEL_TEST_TORCH")
    if not pinned:
        pytest.skip("VISIONTEL_TEST_TORCH is not set: not run by a nox torch session")
    assert torch.__version__.split("+")[0] == pinned
