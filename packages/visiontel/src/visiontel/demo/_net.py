"""URLs a user gives (cameras, collectors): credentials removed, reachability probed."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_KEYS = ("pass", "pwd", "secret", "token", "key", "auth", "user", "sig")


def redact_url(url: str) -> str:
    """``url`` without credentials: no user:password, secret-looking query values hidden."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    query = urlencode(
        [
            (k, "REDACTED" if any(s in k.lower() for s in _SECRET_KEYS) else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def probe(url: str, default_ports: Mapping[str, int], timeout: float) -> str | None:
    """Why a TCP connection to ``url``'s host and port fails; None when it connects.

    Raises ValueError saying what is wrong with the URL itself (port, host).
    """
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port or default_ports.get(parts.scheme.lower())
    except ValueError:
        raise ValueError("has an invalid port") from None
    if not parts.hostname:
        raise ValueError("names no host")
    if port is None:
        raise ValueError("names no port")
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None
