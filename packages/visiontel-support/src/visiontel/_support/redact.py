"""One URL redactor, for anything that becomes an attribute, a log line or a metric label.

``redact_url`` removes the user info (``rtsp://user:pass@cam/1`` -> ``rtsp://cam/1``),
replaces the value of every secret-looking query parameter by ``REDACTED`` and drops the
fragment (never sent to a server, and where OAuth's implicit flow puts its tokens). The rest
of the URL is kept character for character. A string that is not a URL is returned
unchanged. It never raises.

The URL is split by hand rather than with ``urllib.parse``: ``urlsplit`` raises on some
malformed input (an unclosed IPv6 bracket, a bad port) and stops the authority at the first
``?`` or ``#``, which are common in hand-typed camera passwords.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote_plus

__all__ = ["REDACTED", "is_secret_parameter", "redact_url"]

REDACTED = "REDACTED"

# scheme "://" rest: RFC 3986's scheme syntax; anything else is not a URL.
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)(.*)", re.DOTALL)
# Compared after lower-casing and dropping "-", "_", "." and spaces, as substrings: a query
# parameter whose name contains one of these has its value hidden. Substrings over-redact
# a few harmless names ("keyframe"), which costs a diagnostic value; exact names would leak
# every variant a vendor invents (X-Amz-Security-Token, client_secret, sessionid...).
_SECRET_WORDS = (
    "pass",  # password, passwd, passphrase
    "pwd",
    "secret",
    "token",
    "key",  # key, api_key, apikey, accesskey
    "auth",  # auth, authorization, oauth
    "sig",  # sig, signature, X-Amz-Signature
    "credential",  # credential(s), X-Amz-Credential
    "session",
    "cookie",
    "jwt",
    "user",  # user names are personal data; the demo always hid them
)


@functools.lru_cache(maxsize=1024)
def is_secret_parameter(name: str) -> bool:
    """Whether a query parameter called ``name`` (raw or percent-encoded) holds a secret."""
    try:
        folded = unquote_plus(name).lower()
    except Exception:  # unquote_plus does not raise on str, but never is cheaper than sorry
        folded = name.lower()
    folded = re.sub(r"[-_.\s]", "", folded)
    return any(word in folded for word in _SECRET_WORDS)


def _first_of(text: str, chars: str) -> int:
    """Index of the first of ``chars`` in ``text``, else ``len(text)``."""
    return next((i for i, char in enumerate(text) if char in chars), len(text))


def _drop_userinfo(rest: str) -> str:
    """``rest`` (what follows ``scheme://``) without the user info, if it has one."""
    region = rest[: _first_of(rest, "/")]
    if "@" in region:
        # "?" and "#" before the "@" belong to a hand-typed password, not to the query.
        return rest[region.rindex("@") + 1 :]
    authority = rest[: _first_of(rest, "/?#")]
    port = authority.rpartition("]")[2] if authority.startswith("[") else authority
    if ":" in port and not port.rpartition(":")[2].isdigit() and "@" in rest:
        # "user:pa/ss@cam": a "/" in the password; a non-numeric port makes the URL
        # invalid anyway, so everything up to the last "@" is taken as the user info.
        return rest[rest.rindex("@") + 1 :]
    return rest


def _redact_query(query: str) -> str:
    pairs = []
    for pair in query.split("&"):
        name, eq, _value = pair.partition("=")
        pairs.append(f"{name}={REDACTED}" if eq and is_secret_parameter(name) else pair)
    return "&".join(pairs)


@functools.lru_cache(maxsize=1024)
def redact_url(value: str) -> str:
    """``value`` without user info, secret query values or fragment, if it is a URL."""
    try:
        return _redact(value)
    except Exception:
        # Only a bug of ours gets here; hiding the whole value is the safe answer.
        return "<unparsable url>"


def _redact(value: str) -> str:
    if not isinstance(value, str):
        return value
    match = _URL.match(value)
    if match is None:
        return value
    scheme, rest = match.group(1), _drop_userinfo(match.group(2))
    end = _first_of(rest, "/?#")
    authority, tail = rest[:end], rest[end:]
    tail = tail.partition("#")[0]
    path, question, query = tail.partition("?")
    if question:
        query = _redact_query(query)
    return f"{scheme}{authority}{path}{question}{query}"
