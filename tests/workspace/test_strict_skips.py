"""The root conftest's rule: in a CI session a skip fails unless its resource may be lacking.

Each case runs pytest in a child process on a scratch directory holding a copy of the
root conftest.py, exactly as a nox session would load it.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

CASES = """
import pytest

def test_runs():
    assert True

def test_needs_cuda():
    pytest.skip("needs cuda: no CUDA device")

def test_needs_stack():
    pytest.skip("needs stack: run `nox -s stack`")

@pytest.mark.skip(reason="not wanted")
def test_marked_skip():
    pass

@pytest.mark.xfail(reason="known bug", strict=False)
def test_expected_failure():
    assert False
"""

MODULE_SKIP = """
import pytest
pytest.importorskip("no_such_module_here", reason="needs nomod: install it")

def test_never_collected():
    pass
"""


def _run(tmp_path: pathlib.Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_cases.py").write_text(CASES)
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VISIONTEL_")}
    options = [
        "-rA",
        "--continue-on-collection-errors",
        "-p",
        "no:randomly",
        "-p",
        "no:cacheprovider",
    ]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *options],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _outcomes(output: str) -> dict[str, str]:
    """{test id, module, or skip reason: PASSED/FAILED/SKIPPED/XFAIL/ERROR} from -rA lines.

    A failure in setup (a skip marker turned into a failure) reads ERROR, like any setup
    failure; skipped tests are keyed by their reason (pytest prints no test id for them).
    """
    found: dict[str, str] = {}
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        if word == "SKIPPED":
            found[rest.split(": ", 1)[-1].strip()] = word
        elif word in {"PASSED", "FAILED", "XFAIL", "ERROR"}:
            found[rest.split(" - ")[0].strip()] = word
    return found


def test_outside_ci_skips_stay_skips(tmp_path: pathlib.Path) -> None:
    result = _run(tmp_path, {})
    assert result.returncode == 0, result.stdout
    assert "1 passed, 4 skipped, 1 xfailed" in result.stdout


def test_in_ci_only_resources_that_may_be_lacking_can_skip(tmp_path: pathlib.Path) -> None:
    result = _run(tmp_path, {"VISIONTEL_STRICT_SKIPS": "1", "VISIONTEL_MAY_LACK": "cuda"})
    assert result.returncode == 1, result.stdout
    outcomes = _outcomes(result.stdout)
    assert outcomes["test_cases.py::test_runs"] == "PASSED"
    assert outcomes["test_cases.py::test_expected_failure"] == "XFAIL"
    assert outcomes["test_cases.py::test_needs_stack"] == "FAILED"
    assert outcomes["test_cases.py::test_marked_skip"] == "ERROR"
    assert outcomes["test_module_skip.py"] == "ERROR"
    skipped = [k for k, v in outcomes.items() if v == "SKIPPED"]
    assert skipped == ["needs cuda: no CUDA device"], result.stdout
    assert "skipped in a CI session, which must run it: needs stack:" in result.stdout


@pytest.mark.parametrize("may_lack", ["", "stack"])
def test_may_lack_is_exact(tmp_path: pathlib.Path, may_lack: str) -> None:
    env = {"VISIONTEL_STRICT_SKIPS": "1", "VISIONTEL_MAY_LACK": may_lack}
    outcomes = _outcomes(_run(tmp_path, env).stdout)
    assert outcomes["test_cases.py::test_needs_cuda"] == "FAILED"
    if may_lack == "stack":
        assert outcomes["needs stack: run `nox -s stack`"] == "SKIPPED"
    else:
        assert outcomes["test_cases.py::test_needs_stack"] == "FAILED"
