"""The one internal-error reporter: first of a kind with its traceback, repeats counted and
summarised at most once per interval, never raising."""

from __future__ import annotations

import logging
import time

import pytest

from visiontel._support.errors import ErrorReporter, reporter


def _raise(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_first_of_a_kind_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    errors = ErrorReporter("visiontel.testpkg")
    with caplog.at_level(logging.WARNING, logger="visiontel.testpkg"):
        errors.report("post-hook", _raise(KeyError("broken")), message="the model is unaffected")
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.name == "visiontel.testpkg"
    assert "internal error in post-hook: the model is unaffected" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert "Traceback" in caplog.text and "_raise" in caplog.text


def test_repeats_are_counted_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = ErrorReporter("visiontel.testpkg")
    with caplog.at_level(logging.WARNING, logger="visiontel.testpkg"):
        for _ in range(50):
            errors.report("hook", _raise(ValueError("x")))
        errors.report("hook", _raise(TypeError("another kind")))  # new kind: said once
        errors.report("other", _raise(ValueError("another site")))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert errors.counts() == {"hook": 51, "other": 1}


def test_summary_line_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    errors = ErrorReporter("visiontel.testpkg", interval_s=0.2)
    with caplog.at_level(logging.WARNING, logger="visiontel.testpkg"):
        errors.report("hook", _raise(ValueError("1")))
        for _ in range(4):
            errors.report("hook", _raise(ValueError("more")))  # inside the interval: silent
        assert len(caplog.records) == 1
        time.sleep(0.25)
        errors.report("hook", _raise(ValueError("late")))
        errors.report("hook", _raise(ValueError("later")))  # a new interval has begun
    summaries = [r.getMessage() for r in caplog.records[1:]]
    assert summaries == [
        "hook: 5 more internal error(s) since the last report (latest: ValueError: late)"
    ]
    assert caplog.records[1].exc_info is None


def test_level_can_be_chosen(caplog: pytest.LogCaptureFixture) -> None:
    errors = ErrorReporter("visiontel.testpkg", level=logging.WARNING, interval_s=0)
    with caplog.at_level(logging.DEBUG, logger="visiontel.testpkg"):
        errors.report("hook", _raise(ValueError("x")))
        errors.report("hook", _raise(ValueError("y")))  # interval 0: summarised at once
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    assert caplog.records[1].getMessage().startswith("hook: 1 more internal error(s)")


def test_report_without_an_exception_uses_the_one_being_handled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors = ErrorReporter(logging.getLogger("visiontel.testpkg"))
    with caplog.at_level(logging.WARNING, logger="visiontel.testpkg"):
        try:
            {}["missing"]
        except KeyError:
            errors.report("lookup")
        errors.report("plain", message="no exception at all")
    first, second = caplog.records
    assert first.exc_info is not None and first.exc_info[0] is KeyError
    assert second.exc_info is None and "no exception at all" in second.getMessage()


def test_never_raises_even_if_logging_fails() -> None:
    class Exploding(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise RuntimeError("log sink down")

        def handleError(self, record: logging.LogRecord) -> None:
            raise RuntimeError("and so is its error handling")

    logger = logging.getLogger("visiontel.testpkg.exploding")
    logger.propagate = False
    handler = Exploding()
    logger.addHandler(handler)
    try:
        errors = ErrorReporter(logger)
        errors.report("hook", _raise(ValueError("x")))
        errors.warn_once("capacity", "queue full")
        assert errors.counts() == {"hook": 1}
    finally:
        logger.removeHandler(handler)


def test_warn_once_and_reset(caplog: pytest.LogCaptureFixture) -> None:
    errors = ErrorReporter("visiontel.testpkg")
    with caplog.at_level(logging.WARNING, logger="visiontel.testpkg"):
        errors.warn_once("queue", "queue full at %d", 3)
        errors.warn_once("queue", "queue full at %d", 4)
        errors.report("hook", _raise(ValueError("x")))
        errors.reset()
        assert errors.counts() == {}
        errors.warn_once("queue", "queue full at %d", 5)
        errors.report("hook", _raise(ValueError("x")))
    assert [r.getMessage()[:16] for r in caplog.records] == [
        "queue full at 3",
        "visiontel.testpk",
        "queue full at 5",
        "visiontel.testpk",
    ]


def test_one_reporter_per_package() -> None:
    assert reporter("testpkg") is reporter("testpkg")
    assert reporter("testpkg").logger.name == "visiontel.testpkg"
    assert reporter("otherpkg") is not reporter("testpkg")
    with pytest.raises(ValueError, match="short name such as 'torch'"):
        reporter("visiontel.torch")


def test_bad_arguments_say_what_to_pass() -> None:
    with pytest.raises(ValueError, match="interval_s must be >= 0"):
        ErrorReporter("x", interval_s=-1)
    with pytest.raises(TypeError, match="logger must be"):
        ErrorReporter(3)  # type: ignore[arg-type]
