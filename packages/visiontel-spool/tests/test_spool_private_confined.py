"""OpenTelemetry internals are used in one module only: _otel_private.py, behind the gate."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import visiontel.spool as spool

PACKAGE = Path(spool.__file__).parent
GATED = "_otel_private.py"
MODULES = sorted(p for p in PACKAGE.glob("*.py") if p.name != GATED)
PRIVATE_ATTRIBUTES = (
    "_export",
    "_client",
    "_submit",
    "_compress",
    "_preferred_temporality",
    "_channel",
    "_headers",
    "_initialize_channel_and_stub",
)


def test_the_gated_module_holds_what_this_test_looks_for():
    text = (PACKAGE / GATED).read_text()
    assert all(name in text for name in PRIVATE_ATTRIBUTES)
    assert {"_exporters.py", "_core.py", "_spool.py", "_http.py", "_grpc.py"} <= {
        p.name for p in MODULES
    }


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_no_private_opentelemetry_import_outside_the_gated_module(module):
    imported = []
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opentelemetry"):
            imported += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            imported += [a.name for a in node.names if a.name.startswith("opentelemetry")]
    assert [n for n in imported if any(p.startswith("_") for p in n.split("."))] == []
    assert re.search(r"opentelemetry(\.\w+)*\._", module.read_text()) is None


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_no_private_attribute_of_an_exporter_outside_the_gated_module(module):
    text = module.read_text()
    found = [n for n in PRIVATE_ATTRIBUTES if re.search(rf"\.{n}\b", text)]
    assert found == [], f"{module.name} uses {found}: move it into {GATED}"
