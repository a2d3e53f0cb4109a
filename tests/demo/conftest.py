"""Fixtures of the `visiontel demo` tests; helpers live in demo_support."""

from __future__ import annotations

import pathlib

import pytest
from demo_support import run_visiontel


@pytest.fixture
def run(tmp_path: pathlib.Path):
    def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 240):
        return run_visiontel(*args, cwd=tmp_path, env=env, timeout=timeout)

    return _run
