"""Find the metric names a PromQL expression selects (for the name checks)."""

from __future__ import annotations

import re

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_CLAUSES = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGES = re.compile(r"\[[^\]]*\]")
_NAMES = re.compile(r"(?<![\w:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]*\s*\()")
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
    "Inf",
    "NaN",
}


def selected_names(expr: str) -> set[str]:
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"#[^\n]*", "", text)  # PromQL comments
    text = _MATCHERS.sub("", text)
    text = _CLAUSES.sub("", text)
    text = _RANGES.sub("", text)
    found = set()
    for match in _NAMES.finditer(text):
        name = match.group(1)
        if name in _KEYWORDS or re.fullmatch(r"[0-9.e+-]+", name):
            continue
        found.add(name)
    return found
