"""Every ```python snippet on the docs/propagation pages runs as written."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[3] / "docs" / "propagation"
PAGES = sorted(p for p in DOCS.glob("*.md") if p.name != "README.md")
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def test_index_lists_every_page():
    index = (DOCS / "README.md").read_text()
    assert PAGES, f"no pages under {DOCS}"
    for page in PAGES:
        assert f"]({page.name})" in index, f"{page.name} is missing from the index"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_snippet_runs(page, tmp_path):
    blocks = BLOCK.findall(page.read_text())
    assert blocks, f"{page.name} has no runnable snippet"
    script = tmp_path / "docs_snippet.py"  # not the page name: grpc.py would shadow grpc
    script.write_text("\n".join(blocks))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "the snippet should print what it shows"
