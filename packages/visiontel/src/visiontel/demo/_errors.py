"""Errors a user can act on. Their message is printed as one line, without a traceback."""

from __future__ import annotations


class DemoError(Exception):
    """The run cannot go on; ``str(error)`` says what to do."""

    exit_code = 1


class UsageError(DemoError):
    """Bad flags or input found before anything started."""

    exit_code = 2
