"""docs/reliability.md is generated: it holds one row per fault a test records, no more."""

from __future__ import annotations

import json
import pathlib

import pytest
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


# --- render.py --check / --write on a results file -------------------------------------------
def _row(row_id: str, run: str, **fields: str) -> dict[str, str]:
    figures = {"fault": "f", "duration": "1 s", "measured": "0/1 lost", "lost": "nothing"}
    command = f"nox -s reliability_short -- -k test_{row_id.replace('-', '_')}"
    return {"id": row_id, "run": run, "profile": "short", "command": command, **figures, **fields}


def _results(path: pathlib.Path, *runs: tuple[str, list[dict[str, str]]]) -> pathlib.Path:
    """A results file as pytest sessions write it: per run a header line, then its rows."""
    lines = []
    for run, rows in runs:
        lines.append({"run": run, "profile": "short", "started": "2026-12-04T10:00:00+0000"})
        lines.extend(rows)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _complete(run: str) -> list[dict[str, str]]:
    return [_row(row_id, run) for row_id in sorted(render.recorded_ids())]


@pytest.fixture
def doc(tmp_path, monkeypatch) -> pathlib.Path:
    """A doc with a row for every recorded id, in place of docs/reliability.md."""
    path = tmp_path / "reliability.md"
    kept = {r["id"]: {k: v for k, v in r.items() if k != "run"} for r in _complete("old")}
    path.write_text(render.render(kept))
    monkeypatch.setattr(render, "DOC", path)
    monkeypatch.delenv("VISIONTEL_RELIABILITY_RUN", raising=False)
    return path


def _main(capsys, *argv: str) -> tuple[int, str]:
    status = render.main([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out + out.err


def test_check_passes_a_complete_run(doc, tmp_path, capsys):
    results = _results(tmp_path / "r.jsonl", ("run-1", _complete("run-1")))
    status, said = _main(capsys, results, "--check")
    assert status == 0, said
    assert "run-1" in said and f"all {len(render.recorded_ids())} rows" in said


def test_check_fails_on_a_missing_row(doc, tmp_path, capsys):
    rows = [r for r in _complete("run-1") if r["id"] != "collector-slow"]
    results = _results(tmp_path / "r.jsonl", ("run-1", rows))
    status, said = _main(capsys, results, "--check")
    assert status == 1
    assert "collector-slow: no row (tests/reliability/test_collector_faults.py records" in said
    assert "rerun the whole suite" in said


def test_check_fails_on_a_row_without_figures(doc, tmp_path, capsys):
    rows = [
        _row(r["id"], "run-1", measured="", lost=" ")
        if r["id"] == "load-8-threads-64-batches"
        else r
        for r in _complete("run-1")
    ]
    results = _results(tmp_path / "r.jsonl", ("run-1", rows))
    status, said = _main(capsys, results, "--check")
    assert status == 1
    assert "load-8-threads-64-batches: row without figures (empty: measured, lost)" in said


def test_check_fails_on_a_row_left_from_another_run(doc, tmp_path, capsys):
    """A previous run's rows in the same file do not stand in for this run's."""
    this_run = [r for r in _complete("run-2") if r["id"] != "hostile-carriers"]
    results = _results(tmp_path / "r.jsonl", ("run-1", _complete("run-1")), ("run-2", this_run))
    status, said = _main(capsys, results, "--check")
    assert status == 1
    assert "run run-2 (short profile) is incomplete" in said
    assert "hostile-carriers: only a stale row, from run run-1, not this one" in said
    # The older run, named, is complete.
    assert _main(capsys, results, "--check", "--run", "run-1")[0] == 0


def test_check_fails_without_a_run_header_or_file(doc, tmp_path, capsys):
    headless = tmp_path / "r.jsonl"
    headless.write_text("".join(json.dumps(r) + "\n" for r in _complete("run-1")))
    status, said = _main(capsys, headless, "--check")
    assert status == 1 and "no run header" in said
    status, said = _main(capsys, tmp_path / "absent.jsonl", "--check")
    assert status == 1 and "no run header" in said
    status, said = _main(capsys, headless, "--check", "--run", "run-9")
    assert status == 1 and "nothing from run run-9" in said


def test_check_fails_when_the_doc_lacks_a_row(doc, tmp_path, capsys):
    kept = render.doc_rows(doc.read_text())
    del kept["collector-down"]
    doc.write_text(render.render(kept))
    results = _results(tmp_path / "r.jsonl", ("run-1", _complete("run-1")))
    status, said = _main(capsys, results, "--check")
    assert status == 1 and "rows missing ['collector-down']" in said


def test_write_refuses_an_incomplete_run(doc, tmp_path, capsys):
    before = doc.read_text()
    rows = [r for r in _complete("run-1") if r["id"] != "secret-tls-auth"]
    results = _results(tmp_path / "r.jsonl", ("run-1", rows))
    status, said = _main(capsys, results, "--write")
    assert status == 1
    assert "secret-tls-auth: no row" in said and "left as it was" in said
    assert doc.read_text() == before


def test_write_renders_a_complete_run(doc, tmp_path, capsys):
    rows = [_row(r["id"], "run-1", measured=f"figure of {r['id']}") for r in _complete("run-1")]
    results = _results(tmp_path / "r.jsonl", ("run-1", rows))
    status, said = _main(capsys, results, "--write")
    assert status == 0, said
    kept = render.doc_rows(doc.read_text())
    assert set(kept) == render.recorded_ids()
    assert all(row["measured"] == f"figure of {i}" and "run" not in row for i, row in kept.items())
