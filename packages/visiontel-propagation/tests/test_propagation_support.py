"""visiontel.propagation on the shared support layer: the env policy, the one error
reporter, the one URL redactor."""

from __future__ import annotations

import logging

import pytest

import visiontel.propagation as vp
from visiontel._support import env
from visiontel.propagation import _diag


@pytest.mark.parametrize(
    ("value", "error"),
    [("12", TypeError), (True, TypeError), (0, ValueError), (63, ValueError)],
)
def test_a_malformed_limit_argument_raises_saying_what_to_pass(value, error):
    with pytest.raises(error, match="max_value_bytes must be an integer >= 64"):
        vp.configure(max_value_bytes=value)
    assert vp.limits().max_value_bytes == 8192  # unchanged


@pytest.mark.parametrize("raw", ["lots", "63", "-1", "1e4"])
def test_a_malformed_limit_variable_is_logged_once_and_defaulted(monkeypatch, caplog, raw):
    env.reset()
    monkeypatch.setenv("VISIONTEL_PROPAGATION_MAX_VALUE_BYTES", raw)
    monkeypatch.setenv("VISIONTEL_PROPAGATION_MAX_ENTRIES", "12")
    with caplog.at_level(logging.WARNING, logger="visiontel"):
        first, second = _diag.Limits.from_env(), _diag.Limits.from_env()
    assert first == second
    assert (first.max_value_bytes, first.max_entries) == (8192, 12)
    (record,) = [r for r in caplog.records if "MAX_VALUE_BYTES" in r.getMessage()]
    assert record.levelno == logging.WARNING and ">= 64" in record.getMessage()


def test_internal_errors_go_to_the_package_reporter(caplog):
    with caplog.at_level(logging.ERROR, logger="visiontel.propagation"):
        for _ in range(3):
            try:
                raise RuntimeError("a bug of ours")
            except RuntimeError:
                _diag.internal_error("somewhere")
    assert _diag.internal_errors() == {"somewhere": 3}
    (record,) = caplog.records  # the first with its traceback, the rest counted
    assert record.name == "visiontel.propagation" and record.exc_info is not None


@pytest.mark.parametrize(
    ("stream_id", "sent"),
    [
        ("rtsp://cam/1?X-Amz-Signature=abc&ch=2", "rtsp://cam/1?X-Amz-Signature=REDACTED&ch=2"),
        ("rtsp://u:p@cam/1?access_token=t#frag", "rtsp://cam/1?access_token=REDACTED"),
        ("cam-1?token=abc", "cam-1?token=abc"),  # not a URL: an id like any other
    ],
)
def test_stream_ids_are_redacted_like_every_other_url(stream_id, sent):
    assert vp.strip_credentials(stream_id) == sent
    meta: dict[str, str] = {}
    vp.inject_dict(meta, vp.set_frame(vp.FrameIdentity(stream_id, 1, 2)))
    assert vp.get_frame(vp.extract_dict(meta)).stream_id == sent
