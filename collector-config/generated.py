"""Shared by the generators of this directory (grafana/, helm/): write or check files."""

from __future__ import annotations

import pathlib
import sys


def write_or_check(files: dict[pathlib.Path, str], argv: list[str], script: str) -> int:
    """Write every file, or with --check report (exit 1) those that differ from it."""
    if "--check" not in argv:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return 0
    stale = [p.name for p, text in files.items() if not p.exists() or p.read_text() != text]
    if stale:
        print(f"stale: {', '.join(stale)}; run python {script}", file=sys.stderr)
        return 1
    return 0
