"""collector-config's commands (toolchain.py, stack/stack.py): argparse, --help, usage errors.

Only the command lines: nothing here builds a binary or starts the stack.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOLCHAIN = ROOT / "collector-config" / "toolchain.py"
STACK = ROOT / "collector-config" / "stack" / "stack.py"


def _script(path: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (TOOLCHAIN, "{otelcol,promtool,prometheus,jaeger,victorialogs,zipkin,chromium}"),
        (STACK, "up"),
    ],
)
def test_help_describes_the_command(path: pathlib.Path, expected: str) -> None:
    result = _script(path, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {path.name}") and expected in result.stdout


@pytest.mark.parametrize(
    ("path", "args", "said"),
    [
        (TOOLCHAIN, (), "the following arguments are required: tool"),
        (TOOLCHAIN, ("kafka",), "argument tool: invalid choice: 'kafka' (choose from 'otelcol'"),
        (STACK, (), "the following arguments are required: COMMAND"),
        (STACK, ("down",), "invalid choice: 'down' (choose from 'up')"),
    ],
)
def test_bad_arguments_say_what_to_pass(
    path: pathlib.Path, args: tuple[str, ...], said: str
) -> None:
    result = _script(path, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""  # stdout is only ever a path or the endpoints
    assert result.stderr.startswith(f"usage: {path.name}") and said in result.stderr
