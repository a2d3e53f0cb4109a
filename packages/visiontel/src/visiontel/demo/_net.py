"""URLs a user gives (cameras, collectors): reachability probed.

Credentials are removed by ``visiontel._support.redact.redact_url``, shared by every package.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from urllib.parse import urlsplit


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
