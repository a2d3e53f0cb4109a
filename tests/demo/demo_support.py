"""Runs the `visiontel` command in a subprocess, as a user would (helpers, not tests)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys


def visiontel_command() -> list[str]:
    """The installed console script when there is one, else ``python -m visiontel.cli``."""
    script = pathlib.Path(sys.executable).parent / "visiontel"
    if script.exists():
        return [str(script)]
    found = shutil.which("visiontel")
    return [found] if found else [sys.executable, "-m", "visiontel.cli"]


def clean_env() -> dict[str, str]:
    """The environment minus anything that would point the demo elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("OTEL_") or k.startswith("VISIONTEL_DEMO_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_visiontel(
    *args: str, cwd: pathlib.Path, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*visiontel_command(), *args],
        check=False,
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The run stopped with exit code 2 and one line on stderr holding every needle."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
