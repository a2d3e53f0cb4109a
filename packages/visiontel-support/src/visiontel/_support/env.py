"""One policy for settings read from the environment and for settings passed as arguments.

A malformed environment variable never stops the application: it is logged once (WARNING on
the ``visiontel`` logger, naming the variable, the bad value, what is accepted and the
default used) and its default is used; a value out of range counts as malformed. Unset or
empty (after stripping) means "use the default", silently. Every reader takes ``environ=``,
a mapping read instead of ``os.environ``.

A malformed *argument* is a programming error and raises: ``TypeError`` for a wrong type,
``ValueError`` for a wrong value, with a message that says what to pass.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TypeVar

__all__ = [
    "check_choice",
    "check_float",
    "check_int",
    "env_bool",
    "env_choice",
    "env_float",
    "env_int",
    "env_list",
    "env_parsed",
    "env_str",
    "reset",
]

T = TypeVar("T")
_logger = logging.getLogger("visiontel")
_TRUE = frozenset(("1", "true", "yes", "on"))
_FALSE = frozenset(("0", "false", "no", "off"))
# A bad value is echoed in the warning; a long one (a pasted secret, a file) is cut.
_SHOWN_CHARS = 64

_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()


def reset() -> None:
    """Forget which malformed values were already logged (tests)."""
    with _lock:
        _warned.clear()


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    """The stripped value of ``name``; None when unset or blank."""
    value = (os.environ if environ is None else environ).get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _malformed(name: str, raw: str, accepted: str, default: object) -> None:
    # Once per (variable, value): the same mistake is said once per process, a new
    # mistake in the same variable (changed at run time) is said again.
    with _lock:
        if (name, raw) in _warned:
            return
        _warned.add((name, raw))
    shown = raw if len(raw) <= _SHOWN_CHARS else raw[:_SHOWN_CHARS] + "..."
    _logger.warning("%s=%r is not %s; using the default %r", name, shown, accepted, default)


def _range_text(kind: str, minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} between {minimum} and {maximum}"
    if minimum is not None:
        return f"{kind} >= {minimum}"
    if maximum is not None:
        return f"{kind} <= {maximum}"
    return kind


def _in_range(value: float, minimum: float | None, maximum: float | None) -> bool:
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def _check_bounds(name: str, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and maximum is not None and minimum > maximum:
        raise ValueError(f"{name}: minimum {minimum} is above maximum {maximum}")


# --- environment ---------------------------------------------------------------------------
def env_str(name: str, default: str, *, environ: Mapping[str, str] | None = None) -> str:
    """The stripped value of ``name``, or ``default`` when unset or blank."""
    raw = _raw(name, environ)
    return default if raw is None else raw


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """An integer (decimal, ``_`` separators allowed) within the bounds, else ``default``."""
    _check_bounds(name, minimum, maximum)
    raw = _raw(name, environ)
    if raw is None:
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        value = None
    if value is None or not _in_range(value, minimum, maximum):
        _malformed(name, raw, _range_text("an integer", minimum, maximum), default)
        return default
    return value


def env_float(
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> float:
    """A finite number within the bounds, else ``default``."""
    _check_bounds(name, minimum, maximum)
    raw = _raw(name, environ)
    if raw is None:
        return default
    try:
        value: float | None = float(raw)
    except ValueError:
        value = None
    # nan passes no comparison and inf is never reached: neither is a usable setting.
    if value is None or not math.isfinite(value) or not _in_range(value, minimum, maximum):
        _malformed(name, raw, _range_text("a finite number", minimum, maximum), default)
        return default
    return value


def env_bool(name: str, default: bool, *, environ: Mapping[str, str] | None = None) -> bool:
    """1/0, true/false, yes/no, on/off (any case), else ``default``."""
    raw = _raw(name, environ)
    if raw is None:
        return default
    folded = raw.lower()
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    _malformed(name, raw, "a boolean (true/false, 1/0, yes/no, on/off)", default)
    return default


def env_choice(
    name: str,
    default: str,
    choices: Collection[str],
    *,
    environ: Mapping[str, str] | None = None,
) -> str:
    """One of ``choices`` (compared without case, returned as listed), else ``default``."""
    if not choices:
        raise ValueError(f"{name}: pass at least one choice")
    raw = _raw(name, environ)
    if raw is None:
        return default
    found = _match(raw, choices)
    if found is None:
        _malformed(name, raw, "one of " + ", ".join(choices), default)
        return default
    return found


def env_list(
    name: str, default: Sequence[str] = (), *, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Comma-separated items, stripped, empty ones dropped; ``default`` when unset or blank."""
    raw = _raw(name, environ)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def _match(value: str, choices: Collection[str]) -> str | None:
    folded = value.strip().lower()
    for choice in choices:
        if choice.lower() == folded:
            return choice
    return None


def env_parsed(
    name: str,
    default: T,
    parse: Callable[[str], T],
    accepted: str,
    *,
    environ: Mapping[str, str] | None = None,
) -> T:
    """``parse(value)`` for a format the readers above do not know (a size, a port or "off"),
    under the same policy: ``parse`` raising ValueError makes the value malformed, logged
    once (``accepted`` says what is expected) and replaced by ``default``."""
    raw = _raw(name, environ)
    if raw is None:
        return default
    try:
        return parse(raw)
    except ValueError:
        _malformed(name, raw, accepted, default)
        return default


# --- arguments -----------------------------------------------------------------------------
def check_int(
    name: str, value: object, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as an int within the bounds; TypeError / ValueError saying what to pass."""
    _check_bounds(name, minimum, maximum)
    wanted = _range_text("an integer", minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {wanted}; got {type(value).__name__} {value!r}")
    if not _in_range(value, minimum, maximum):
        raise ValueError(f"{name} must be {wanted}; got {value!r}")
    return int(value)


def check_float(
    name: str, value: object, *, minimum: float | None = None, maximum: float | None = None
) -> float:
    """``value`` (an int or a float) as a finite float within the bounds."""
    _check_bounds(name, minimum, maximum)
    wanted = _range_text("a finite number", minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be {wanted}; got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number) or not _in_range(number, minimum, maximum):
        raise ValueError(f"{name} must be {wanted}; got {value!r}")
    return number


def check_choice(name: str, value: object, choices: Collection[str]) -> str:
    """``value`` as one of ``choices`` (compared without case, returned as listed)."""
    if not choices:
        raise ValueError(f"{name}: pass at least one choice")
    wanted = "one of " + ", ".join(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {wanted}; got {type(value).__name__} {value!r}")
    found = _match(value, choices)
    if found is None:
        raise ValueError(f"{name} must be {wanted}; got {value!r}")
    return found
