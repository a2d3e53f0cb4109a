"""`visiontel`'s command line: argparse, --help, and errors that say what to pass."""

from __future__ import annotations

import pytest

from visiontel.cli._main import main


def _usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(list(argv))
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: visiontel"), err
    return err.strip().splitlines()[-1]


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "versions" in out


def test_no_command_says_which_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    line = _usage_error(capsys)
    assert line == "visiontel: error: give a command: demo (the instrumented pipeline) or versions"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (("bogus",), "invalid choice: 'bogus'"),
        (("demo", "--frames", "many"), "argument --frames: invalid int value: 'many'"),
        (("demo", "--size", "10x10"), "argument --size: invalid size WIDTHxHEIGHT (16..7680"),
        (("demo", "--device", "tpu"), "argument --device: invalid choice: 'tpu'"),
    ],
)
def test_bad_arguments_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], said: str
) -> None:
    assert said in _usage_error(capsys, *argv)


def test_bad_values_found_after_parsing_say_what_to_pass(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Checked before anything starts (no process, no output folder): exit 2, one line.
    assert main(["demo", "--canary-version", "2.0", "--canary-fraction", "1.5"]) == 2
    assert capsys.readouterr().err == (
        "visiontel demo: error: --canary-fraction must be between 0 and 1, e.g. 0.1\n"
    )
    assert main(["demo", "--canary-fault", "fast", "--canary-version", "2.0"]) == 2
    err = capsys.readouterr().err
    assert "--canary-fault 'fast' is not a fault: pick one of overdetect" in err


def test_versions_lists_every_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["versions"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["visiontel", "visiontel-torch", "visiontel-gpu", "visiontel-propagation"]
