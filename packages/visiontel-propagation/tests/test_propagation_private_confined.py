"""OpenTelemetry internals are used in one module only: _otel_private.py, behind the gate."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import visiontel.propagation as vp

PACKAGE = Path(vp.__file__).parent
GATED = "_otel_private.py"
# Text that means an OpenTelemetry internal (or a shortcut around the public API) is used.
PRIVATE_NAMES = (
    "tuple.__new__",  # building SpanContext without its constructor
    "_SPAN_KEY",
    "_BAGGAGE_KEY",
    "_SPAN_TYPES",
    "_span_limits",
    "_propagators",  # CompositePropagator's members: is the global one the default?
)
# _frame.py builds its own FrameIdentity (a NamedTuple of this package) with
# tuple.__new__; that is no OpenTelemetry object, which the second test keeps true.
ALLOWED = {"_frame.py": {"tuple.__new__"}}
MODULES = sorted(p for p in PACKAGE.glob("*.py") if p.name != GATED)


def test_the_package_has_the_modules_this_test_expects():
    names = {p.name for p in MODULES}
    assert {"_w3c.py", "_batch.py", "_carriers.py", "_frame.py", "_slot.py"} <= names
    assert all(name in (PACKAGE / GATED).read_text() for name in PRIVATE_NAMES[1:])


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_no_private_name_outside_the_gated_module(module):
    text = module.read_text()
    allowed = ALLOWED.get(module.name, set())
    # whole names only: _w3c's _BAGGAGE_KEY_RE (W3C's baggage key syntax) is not one
    found = [
        name
        for name in PRIVATE_NAMES
        if re.search(rf"\b{re.escape(name)}\b", text) and name not in allowed
    ]
    assert found == [], f"{module.name} uses {found}: move it into {GATED}"


def test_the_allowed_tuple_new_is_not_on_an_opentelemetry_object():
    text = (PACKAGE / "_frame.py").read_text()
    assert "SpanContext" not in text and "Link" not in text


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_no_private_opentelemetry_module_or_name_imported(module):
    text = module.read_text()
    imported = []  # dotted names of everything imported from OpenTelemetry
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opentelemetry"):
            imported += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            imported += [a.name for a in node.names if a.name.startswith("opentelemetry")]
    private = [name for name in imported if any(p.startswith("_") for p in name.split("."))]
    assert private == []
    assert re.search(r"\bopentelemetry(\.\w+)*\._", text) is None  # a dotted path into one
