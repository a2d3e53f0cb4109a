"""`python -m visiontel.gpu.testing`: the NVML simulator's command line (argparse)."""

from __future__ import annotations

import ctypes
import pathlib
import subprocess
import sys

import pytest

from visiontel.gpu.testing import LIBRARY_NAME, exported_functions, main


def _module(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "visiontel.gpu.testing", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_help_prints_usage_and_builds_nothing(tmp_path: pathlib.Path) -> None:
    result = _module("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OUTPUT_DIR" in result.stdout and "--hide" in result.stdout
    assert list(tmp_path.iterdir()) == []  # no folder named --help, nothing compiled


def test_a_missing_output_dir_is_a_usage_error(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([]) == 2
    assert "the following arguments are required: OUTPUT_DIR" in capsys.readouterr().err


def test_an_unknown_hide_name_errors_with_the_valid_names(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "sim"
    assert main([str(target), "--hide", "nvmlDeviceGetProcessUtilization,nvmlNoSuchCall"]) == 2
    err = capsys.readouterr().err
    assert "argument --hide: the simulator does not implement nvmlNoSuchCall" in err
    listed = err.split("it implements: ", 1)[1].strip().split(", ")
    assert listed == sorted(exported_functions())
    assert not target.exists()
    assert main([str(target), "--hide", "nvmlDeviceGetProcessUtilizatio"]) == 2
    assert "did you mean nvmlDeviceGetProcessUtilization?" in capsys.readouterr().err


def test_build_with_hide_leaves_those_entry_points_out(tmp_path: pathlib.Path) -> None:
    hidden = ("nvmlDeviceGetProcessUtilization", "nvmlDeviceGetComputeRunningProcesses_v3")
    result = _module(
        "sim", "--hide", hidden[0], "--hide", f"{hidden[1]},", cwd=tmp_path
    )  # repeatable, comma-separated, empty names dropped
    assert result.returncode == 0, result.stderr
    library = pathlib.Path(result.stdout.strip())
    assert library.is_absolute() and library.name == LIBRARY_NAME
    assert library.parent.parent == tmp_path / "sim"  # a subfolder per set of hidden names
    loaded = ctypes.CDLL(str(library))
    for name in hidden:
        with pytest.raises(AttributeError):
            getattr(loaded, name)
    assert loaded.nvmlDeviceGetCount_v2 is not None  # the rest is still exported
