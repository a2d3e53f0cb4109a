"""The one URL redactor: no user info, no secret query value, no fragment; anything that is
not a URL unchanged; never raises."""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from visiontel._support.redact import is_secret_parameter, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://user:pass@cam/1", "rtsp://cam/1"),
        ("rtsp://admin:s3cret@10.0.0.5:554/live", "rtsp://10.0.0.5:554/live"),
        ("rtsp://admin@cam.local/stream1", "rtsp://cam.local/stream1"),
        (
            "rtsp://cam.local/s?user=bob&password=pw&fps=5",
            "rtsp://cam.local/s?user=REDACTED&password=REDACTED&fps=5",
        ),
        ("http://u:p@[fd00::1]:8080/mjpg", "http://[fd00::1]:8080/mjpg"),
        ("rtsp://cam.local/stream#frag", "rtsp://cam.local/stream"),
        (
            "https://b.s3.amazonaws.com/f.jpg?X-Amz-Signature=abc&X-Amz-Credential=AKIA%2F1"
            "&X-Amz-Security-Token=t&X-Amz-Expires=60",
            "https://b.s3.amazonaws.com/f.jpg?X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED"
            "&X-Amz-Security-Token=REDACTED&X-Amz-Expires=60",
        ),
        (
            "http://h/p?API-KEY=1&apikey=2&access_token=3&Authorization=4&sig=5&session=6",
            "http://h/p?API-KEY=REDACTED&apikey=REDACTED&access_token=REDACTED"
            "&Authorization=REDACTED&sig=REDACTED&session=REDACTED",
        ),
        ("http://h/p?to%6Ben=1&camera=2&flag", "http://h/p?to%6Ben=REDACTED&camera=2&flag"),
        # "?", "#" and "/" typed into a password stay with the password.
        ("rtsp://admin:p?ss#w@cam/1", "rtsp://cam/1"),
        ("rtsp://admin:pa/ss@cam/1", "rtsp://cam/1"),
        ("rtsp://admin:p@ss@cam/1", "rtsp://cam/1"),
        # Not URLs, or nothing to hide: unchanged, character for character.
        ("cam-01", "cam-01"),
        ("user:pw@host", "user:pw@host"),
        ("", ""),
        ("http://[::1", "http://[::1"),
        ("HTTP://Cam:8554/A?x=1", "HTTP://Cam:8554/A?x=1"),
        ("http://[fe80::1]/p/@x", "http://[fe80::1]/p/@x"),
    ],
)
def test_examples(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "access_token",
        "key",
        "api_key",
        "apikey",
        "password",
        "passwd",
        "pwd",
        "secret",
        "sig",
        "signature",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "session",
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "client_secret",
        "TOKEN",
    ],
)
def test_secret_parameter_names(name: str) -> None:
    assert is_secret_parameter(name)


@pytest.mark.parametrize("name", ["fps", "camera", "stream", "width", "channel", "subtype"])
def test_ordinary_parameter_names(name: str) -> None:
    assert not is_secret_parameter(name)


SECRET_NAMES = st.sampled_from(
    [
        "token",
        "Access_Token",
        "api-key",
        "PASSWORD",
        "pwd",
        "secret",
        "sig",
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "authorization",
        "credentials",
        "session",
    ]
)
# The secret never contains "@", "/", "?", "#", "&" or "=" unencoded in a query value, as a
# URL would carry it; "S3" never occurs in the hosts, paths and names below.
SECRET = st.text(string.ascii_letters + string.digits + "-._~!$'()*+,;:%", max_size=20).map(
    lambda s: "S3" + s
)
HOSTS = st.sampled_from(["cam1", "10.0.0.7", "[fe80::1]", "camera.local", "h"])
PATHS = st.text(string.ascii_lowercase + string.digits + "/_-.", max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    scheme=st.sampled_from(["rtsp", "rtsps", "http", "https", "rtmp", "RTSP", "s3"]),
    user=st.text(string.ascii_lowercase + string.digits, max_size=8),
    password=SECRET,
    host=HOSTS,
    port=st.one_of(st.none(), st.integers(1, 65535)),
    path=PATHS,
    names=st.lists(SECRET_NAMES, min_size=1, max_size=3),
    fragment=st.booleans(),
)
@example(
    scheme="rtsp",
    user="",
    password="S3",
    host="h",
    port=None,
    path="",
    names=["sig"],
    fragment=False,
)
def test_no_secret_value_ever_survives(
    scheme: str,
    user: str,
    password: str,
    host: str,
    port: int | None,
    path: str,
    names: list[str],
    fragment: bool,
) -> None:
    netloc = f"{user}:{password}@{host}" + (f":{port}" if port else "")
    query = "&".join(f"{name}={password}" for name in names) + "&fps=5"
    url = f"{scheme}://{netloc}/{path}?{query}" + (f"#{password}" if fragment else "")
    shown = redact_url(url)
    assert password not in shown, shown
    assert "S3" not in shown, shown
    assert shown.startswith(f"{scheme}://{host}") and shown.endswith("&fps=5"), shown


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_never_raises_and_plain_text_is_unchanged(text: str) -> None:
    shown = redact_url(text)
    assert isinstance(shown, str)
    if "://" not in text:
        assert shown == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60))
def test_never_raises_on_url_shaped_noise(authority: str, rest: str) -> None:
    assert isinstance(redact_url(f"rtsp://{authority}{rest}"), str)
