"""docs/reliability.md is generated: it holds one row per fault a test records, no more."""

from __future__ import annotations

import render


def test_doc_has_a_row_for_every_recorded_fault_and_no_other():
    assert render.DOC.exists(), "docs/reliability.md is missing: run `nox -s reliability`"
    rows = render.doc_rows(render.DOC.read_text())
    recorded = render.recorded_ids()
    assert len(recorded) >= 10, recorded  # the ids are found in the test sources
    assert set(rows) == recorded, (
        f"missing rows {sorted(recorded - set(rows))}, stale rows {sorted(set(rows) - recorded)}: "
        "run `nox -s reliability` to regenerate docs/reliability.md"
    )


def test_table_is_rendered_from_the_kept_rows():
    """The visible table and the JSON rows kept below it say the same thing."""
    text = render.DOC.read_text()
    rows = render.doc_rows(text)
    assert render.render(rows) == text
    for row_id, row in rows.items():
        assert f"| {row_id} |" in text and row["command"].startswith("nox -s reliability")
