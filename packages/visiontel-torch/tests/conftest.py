from __future__ import annotations

from collections.abc import Iterator

import pytest

import visiontel.torch as vt
from visiontel.torch import _model

from torch_support import Telemetry, make_telemetry


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    yield make_telemetry()
    for model in _model.all_instrumented():
        vt.uninstrument_model(model)
