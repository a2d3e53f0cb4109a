"""Errors a user can act on. Their message is printed as one line, without a traceback."""

from __future__ import annotations


class DemoError(Exception):
    """The run cannot go on; ``str(error)`` says what to do."""

    exit_code = 1


class UsageError(DemoError):
    """Bad flags or input found before anything started."""

    exit_code = 2


def port_in_use(port: int, flag: str) -> UsageError:
    """The one line for a port given with ``flag`` that something else holds.

    Said by the launcher's check before anything starts and, should the port be taken
    between that check and the service's own bind, by the service (same text, same code).
    """
    return UsageError(
        f"port {port} on 127.0.0.1 is in use ({flag}): stop what holds it, pick "
        f"another {flag}, or leave {flag} out to use a free port"
    )
