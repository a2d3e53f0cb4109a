"""The log file of each process the stack starts: read whole, or its last lines for an
error message. Shared by stack.py and its sibling modules; standard library only."""

from __future__ import annotations

import pathlib


def read_log(log: pathlib.Path) -> str:
    """The file's text so far; empty while the process has not created it yet."""
    try:
        return log.read_text(errors="replace")
    except OSError:
        return ""


def log_tail(log: pathlib.Path, lines: int = 40) -> str:
    """The last `lines` lines, for an error that says why a process did not come up."""
    return "\n".join(read_log(log).splitlines()[-lines:]) or "(no log)"
