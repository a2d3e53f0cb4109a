"""The one environment policy: a malformed variable is logged once and its default used; a
malformed argument raises with a message saying what to pass."""

from __future__ import annotations

import logging

import pytest

from visiontel._support import env

NAME = "VISIONTEL_TEST_SETTING"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "visiontel"]


@pytest.mark.parametrize(
    ("raw", "kwargs", "expected"),
    [
        ("12", {}, 12),
        ("  7 ", {"minimum": 1}, 7),
        ("-3", {}, -3),
        ("1_000", {}, 1000),
        ("10", {"minimum": 1, "maximum": 10}, 10),
    ],
)
def test_env_int_reads_good_values_silently(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, raw, kwargs, expected
) -> None:
    monkeypatch.setenv(NAME, raw)
    with caplog.at_level(logging.WARNING):
        assert env.env_int(NAME, 5, **kwargs) == expected
    assert _warnings(caplog) == []


@pytest.mark.parametrize(
    ("raw", "kwargs", "accepted"),
    [
        ("twelve", {}, "an integer"),
        ("1.5", {}, "an integer"),
        ("0", {"minimum": 1}, "an integer >= 1"),
        ("11", {"minimum": 1, "maximum": 10}, "an integer between 1 and 10"),
        ("-1", {"maximum": -2}, "an integer <= -2"),
    ],
)
def test_env_int_malformed_is_logged_once_and_defaulted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, raw, kwargs, accepted
) -> None:
    monkeypatch.setenv(NAME, raw)
    with caplog.at_level(logging.WARNING):
        assert env.env_int(NAME, 5, **kwargs) == 5
        assert env.env_int(NAME, 5, **kwargs) == 5  # said once, not twice
    (message,) = _warnings(caplog)
    assert NAME in message and repr(raw) in message and accepted in message
    assert "default 5" in message
    assert caplog.records[0].levelno == logging.WARNING


def test_a_new_bad_value_is_said_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        for raw in ("x", "x", "y"):
            monkeypatch.setenv(NAME, raw)
            env.env_int(NAME, 1)
    assert len(_warnings(caplog)) == 2


@pytest.mark.parametrize("raw", ["", "   ", None])
def test_unset_or_blank_is_the_default_silently(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, raw: str | None
) -> None:
    if raw is not None:
        monkeypatch.setenv(NAME, raw)
    with caplog.at_level(logging.WARNING):
        assert env.env_int(NAME, 3) == 3
        assert env.env_float(NAME, 2.5) == 2.5
        assert env.env_bool(NAME, True) is True
        assert env.env_str(NAME, "d") == "d"
        assert env.env_choice(NAME, "b", ["a", "b"]) == "b"
        assert env.env_list(NAME, ["p"]) == ["p"]
    assert _warnings(caplog) == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("0.25", 0.25), ("1e3", 1000.0), (" 7 ", 7.0), ("nan", 2.0), ("inf", 2.0), ("-1", 2.0)],
)
def test_env_float(monkeypatch: pytest.MonkeyPatch, raw: str, expected: float) -> None:
    monkeypatch.setenv(NAME, raw)
    assert env.env_float(NAME, 2.0, minimum=0.0) == expected


def test_env_float_says_what_is_accepted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(NAME, "0.01")
    with caplog.at_level(logging.WARNING):
        assert env.env_float(NAME, 1.0, minimum=0.05) == 1.0
    (message,) = _warnings(caplog)
    assert "a finite number >= 0.05" in message and "'0.01'" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        *[(v, True) for v in ("1", "true", "TRUE", "Yes", "on", " On ")],
        *[(v, False) for v in ("0", "false", "False", "NO", "off")],
    ],
)
def test_env_bool_words(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv(NAME, raw)
    assert env.env_bool(NAME, not expected) is expected


def test_env_bool_malformed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(NAME, "maybe")
    with caplog.at_level(logging.WARNING):
        assert env.env_bool(NAME, True) is True
    (message,) = _warnings(caplog)
    assert "'maybe'" in message and "true/false" in message


def test_env_choice_matches_without_case_and_returns_it_as_listed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(NAME, " HTTP/Protobuf ")
    assert env.env_choice(NAME, "grpc", ["grpc", "http/protobuf"]) == "http/protobuf"
    monkeypatch.setenv(NAME, "udp")
    with caplog.at_level(logging.WARNING):
        assert env.env_choice(NAME, "grpc", ["grpc", "http/protobuf"]) == "grpc"
    (message,) = _warnings(caplog)
    assert "one of grpc, http/protobuf" in message and "'udp'" in message


def test_env_list_and_str(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NAME, " a, ,b ,,c ")
    assert env.env_list(NAME) == ["a", "b", "c"]
    assert env.env_str(NAME, "x") == "a, ,b ,,c"
    monkeypatch.delenv(NAME)
    assert env.env_list(NAME) == []


def _pair(raw: str) -> tuple[int, int]:
    left, _, right = raw.partition(":")
    return int(left), int(right)  # ValueError when malformed


def test_env_parsed_reads_its_own_format_under_the_same_policy(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(NAME, raising=False)
    assert env.env_parsed(NAME, (1, 2), _pair, "a pair A:B") == (1, 2)
    monkeypatch.setenv(NAME, " 3:4 ")
    assert env.env_parsed(NAME, (1, 2), _pair, "a pair A:B") == (3, 4)
    monkeypatch.setenv(NAME, "3x4")
    with caplog.at_level(logging.WARNING):
        assert env.env_parsed(NAME, (1, 2), _pair, "a pair A:B") == (1, 2)
        assert env.env_parsed(NAME, (1, 2), _pair, "a pair A:B") == (1, 2)
    (message,) = _warnings(caplog)  # said once
    assert NAME in message and "'3x4'" in message and "a pair A:B" in message
    assert "(1, 2)" in message


def test_a_long_bad_value_is_cut_in_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(NAME, "z" * 5000)
    with caplog.at_level(logging.WARNING):
        env.env_int(NAME, 1)
    (message,) = _warnings(caplog)
    assert len(message) < 300


# --- arguments -----------------------------------------------------------------------------
def test_check_int() -> None:
    assert env.check_int("batch", 4, minimum=1) == 4
    with pytest.raises(TypeError, match=r"batch must be an integer >= 1; got bool True"):
        env.check_int("batch", True, minimum=1)
    with pytest.raises(TypeError, match=r"got float 2\.0"):
        env.check_int("batch", 2.0)
    with pytest.raises(ValueError, match=r"batch must be an integer between 1 and 8; got 9"):
        env.check_int("batch", 9, minimum=1, maximum=8)


def test_check_float() -> None:
    assert env.check_float("interval", 2, minimum=0.05) == 2.0
    assert isinstance(env.check_float("interval", 2), float)
    with pytest.raises(ValueError, match=r"interval must be a finite number >= 0\.05; got 0\.01"):
        env.check_float("interval", 0.01, minimum=0.05)
    with pytest.raises(ValueError, match="finite"):
        env.check_float("interval", float("nan"))
    with pytest.raises(TypeError, match="got str '1'"):
        env.check_float("interval", "1")


def test_check_choice() -> None:
    assert env.check_choice("mode", "LAYER", ["model", "layer"]) == "layer"
    with pytest.raises(ValueError, match="mode must be one of model, layer; got 'tile'"):
        env.check_choice("mode", "tile", ["model", "layer"])
    with pytest.raises(TypeError, match="got int 3"):
        env.check_choice("mode", 3, ["model", "layer"])


def test_inconsistent_bounds_are_a_programming_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NAME, "3")
    with pytest.raises(ValueError, match="minimum 5 is above maximum 1"):
        env.env_int(NAME, 3, minimum=5, maximum=1)
    with pytest.raises(ValueError, match="at least one choice"):
        env.env_choice(NAME, "a", [])


def test_a_mapping_can_stand_in_for_the_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(NAME, "99")
    given = {NAME: "4"}
    assert env.env_int(NAME, 1, environ=given) == 4
    assert env.env_float(NAME, 1.0, environ=given) == 4.0
    assert env.env_str(NAME, "", environ=given) == "4"
    assert env.env_list(NAME, environ=given) == ["4"]
    assert env.env_choice(NAME, "1", ["1", "4"], environ=given) == "4"
    assert env.env_bool(NAME, True, environ={NAME: "off"}) is False
    assert env.env_int(NAME, 1, environ={}) == 1  # the mapping replaces os.environ whole
    with caplog.at_level(logging.WARNING):
        assert env.env_int(NAME, 1, maximum=3, environ=given) == 1
    assert "VISIONTEL_TEST_SETTING='4'" in caplog.text
