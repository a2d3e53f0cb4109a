"""Render docs/reliability.md from the rows the reliability tests recorded.

    python tests/reliability/render.py RESULTS.jsonl --write   # update the doc (full profile)
    python tests/reliability/render.py RESULTS.jsonl --check   # this run is complete, and
                                                               # the doc has a row for each

Every row of the table comes from a test (tests/reliability/reliability_support.append_row).
A pytest session writes a header line naming its run to RESULTS, then one line per row, each
carrying that run's id. The run checked is the one named by --run (or the environment's
VISIONTEL_RELIABILITY_RUN), else the last header in RESULTS.

Both modes first check that run: every row id a test records (the `record("...")` calls of
tests/reliability/test_*.py) must be in RESULTS from this run, with its figures (fault,
duration, measured, lost); a row left from another run does not count. --write refuses to
touch the doc otherwise; it writes the whole table from this run. --check then fails when
this run recorded a row id the committed doc lacks, or the doc holds a row no test records
any more (or one without figures). The rows are also kept as JSON at the end of the doc.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
SUITE = pathlib.Path(__file__).resolve().parent
MARKER = "<!-- reliability rows (generated; edit the tests, not this) -->"
COLUMNS = (
    ("fault", "Fault"),
    ("duration", "How long"),
    ("measured", "What was measured"),
    ("lost", "What was lost"),
    ("command", "Reproduce"),
)
# The fields a row must fill: a row lacking one was not measured, whatever its id says.
FIGURES = ("fault", "duration", "measured", "lost")
# What a row carries about its run; the doc does not keep it.
RUN_FIELDS = ("run",)
RERUN = (
    "rerun the whole suite: `nox -s reliability_short` (CI), or `nox -s reliability` to "
    "regenerate docs/reliability.md; a `-k` run records only some rows"
)

HEADER = """# Reliability

What visiontel does when things go wrong: the collector is down or slow, the GPU or its
driver fails, the inference threads are loaded, the input is hostile, secrets are around.
Each row below was written by a test of `tests/reliability/` (the `reliability` nox
session runs the full profile and regenerates this page; `reliability_short`, part of
`nox -t ci`, runs shorter outages and load, checks that its run recorded every row with
its figures, and that this page has a row for each). The *profile* column says which run
produced the figures.

Bounds the tests assert are stated in the "What was measured" column; a row exists only
if its test ran, and the session fails if any assertion failed.

How to read the figures:

* **Throughput** of the collector-fault rows is per unit of the application's own work: a
  frame's CPU time on the inference thread (read inside it; garbage collection left out
  and given beside it), in bare forwards of the same model that the thread runs every 4th
  frame, healthy over fault. These tests run on 2 shared cores where a CPU second itself
  gets faster or slower with the neighbours' load: between identical phases with no fault,
  frames per process-CPU second moved by 0.86–1.14, wall-clock frame rates by 0.89–1.14 and
  even the inference thread's plain CPU time per frame by 0.84–1.09, while the bare forward
  interleaved with the frames slows with them and the ratio in its units read 0.987–1.009
  (20 runs, `python tests/reliability/null_band.py`). The asserted floor is 0.95: a fault
  that makes each frame cost the inference path 5 % more fails. With the collector down it
  is 0.90, because the SDK's own log record for each span it drops costs that thread a
  measured 3–7 % (0.99–1.00 with that logger quieted): a real cost, left visible.
  Process-CPU and wall-clock ratios are given beside it, not asserted; a failing or waiting
  exporter usually makes them read above 1, as the exporter does less.
* **Stalls** are the longest gap between two consecutive frames of an inference thread;
  waiting on an export would show up as a gap of the export's timeout or delay (3 s).
  Garbage collections of the test process (~130 ms each) are the usual longest gap.
* **Memory** is the growth of the test process's resident set size (Linux `statm`), which
  includes the collector-down test's own per-frame ledger (the load test only counts its
  spans, and bounds the drift between its run's two halves as well). The suite runs with
  `pytest -p no:logging`: pytest's log capture would keep the exporter's retry records,
  and through their tracebacks the batches being retried, alive.
* **Lost spans** are counted by the test: every span ended is tallied in-process, every
  span stored is read back from the collector's file exporter output.

"""


def load_lines(results: pathlib.Path) -> list[dict[str, str]]:
    """Every line of RESULTS (none if it does not exist)."""
    lines = []
    for line in results.read_text().splitlines() if results.exists() else []:
        if line.strip():
            lines.append(json.loads(line))
    return lines


def load_rows(results: pathlib.Path) -> list[dict[str, str]]:
    """The rows in RESULTS, every run's (header lines left out)."""
    return [line for line in load_lines(results) if "id" in line]


@dataclasses.dataclass
class RunCheck:
    """What one run left in a results file, against the row ids the tests record."""

    run: str
    profile: str
    rows: dict[str, dict[str, str]]  # this run's rows, by id (the last one of an id wins)
    absent: list[str]  # expected, not recorded by any run in the file
    other_run: dict[str, str]  # expected, recorded only by another run: id -> that run
    without_figures: dict[str, list[str]]  # this run's rows lacking figures: id -> fields
    error: str = ""  # no such run in the file

    @property
    def complete(self) -> bool:
        return not (self.error or self.absent or self.other_run or self.without_figures)

    def report(self, results: pathlib.Path) -> str:
        if self.error:
            return f"{results}: {self.error}; {RERUN}"
        where = source_of()
        lines = [f"{results}: run {self.run} ({self.profile} profile) is incomplete:"]
        for row_id in self.absent:
            lines.append(
                f"  {row_id}: no row ({where.get(row_id, '?')} records it: its test did not "
                "run, or failed before recording)"
            )
        for row_id, run in sorted(self.other_run.items()):
            lines.append(f"  {row_id}: only a stale row, from run {run}, not this one")
        for row_id, fields in sorted(self.without_figures.items()):
            lines.append(f"  {row_id}: row without figures (empty: {', '.join(fields)})")
        lines.append(RERUN)
        return "\n".join(lines)


def check_run(results: pathlib.Path, run: str | None = None) -> RunCheck:
    """This run's rows in RESULTS (run: its id; default the last header's) and what is
    wrong with them."""
    lines = load_lines(results)
    headers = [line for line in lines if "id" not in line and "run" in line]
    if run is None:
        if not headers:
            why = "no run header in it (a pytest session of tests/reliability writes one first)"
            return RunCheck("?", "?", {}, [], {}, {}, error=why)
        run = headers[-1]["run"]
    elif not any(line.get("run") == run for line in lines):
        return RunCheck(run, "?", {}, [], {}, {}, error=f"nothing from run {run} in it")
    profile = next((h["profile"] for h in reversed(headers) if h["run"] == run), "?")
    rows = {line["id"]: line for line in lines if "id" in line and line.get("run") == run}
    others = {line["id"]: line.get("run", "(no run id)") for line in lines if "id" in line}
    expected = recorded_ids()
    missing = sorted(expected - set(rows))
    return RunCheck(
        run=run,
        profile=profile,
        rows=rows,
        absent=[i for i in missing if i not in others],
        other_run={i: others[i] for i in missing if i in others},
        without_figures={
            i: empty for i, row in sorted(rows.items()) if (empty := _empty_figures(row))
        },
    )


def _empty_figures(row: dict[str, str]) -> list[str]:
    return [key for key in FIGURES if not str(row.get(key, "")).strip()]


def doc_rows(text: str) -> dict[str, dict[str, str]]:
    """The rows kept at the end of the doc, by id."""
    if MARKER not in text:
        return {}
    block = text.split(MARKER, 1)[1]
    match = re.search(r"<!--\n(.*)\n-->", block, re.S)
    return {r["id"]: r for r in json.loads(match.group(1))} if match else {}


def source_of() -> dict[str, str]:
    """Row id -> the test file that records it: the first argument of every record("...")
    call in tests/reliability/test_*.py."""
    where: dict[str, str] = {}
    for path in sorted(SUITE.glob("test_*.py")):
        for row_id in re.findall(r"\brecord\(\s*\"([a-z0-9-]+)\"", path.read_text()):
            where[row_id] = f"tests/reliability/{path.name}"
    return where


def recorded_ids() -> set[str]:
    """Row ids the tests record."""
    return set(source_of())


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def render(rows: dict[str, dict[str, str]]) -> str:
    lines = [HEADER, "| id | " + " | ".join(title for _, title in COLUMNS) + " | profile |"]
    lines.append("|" + "---|" * (len(COLUMNS) + 2))
    for row_id in sorted(rows):
        row = rows[row_id]
        cells = [_cell(row.get(key, "")) for key, _ in COLUMNS]
        cells[-1] = f"`{cells[-1]}`"
        lines.append(f"| {row_id} | " + " | ".join(cells) + f" | {row.get('profile', '')} |")
    kept = json.dumps([rows[k] for k in sorted(rows)], indent=1)
    return "\n".join(lines) + f"\n\n{MARKER}\n<!--\n{kept}\n-->\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=pathlib.Path)
    parser.add_argument(
        "--run",
        default=os.environ.get("VISIONTEL_RELIABILITY_RUN") or None,
        help="the run to check (default: $VISIONTEL_RELIABILITY_RUN, else the last in RESULTS)",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    run = check_run(args.results, args.run)
    if not run.complete:
        refused = " docs/reliability.md left as it was." if args.write else ""
        print(run.report(args.results) + refused, file=sys.stderr)
        return 1
    new = {k: {f: v for f, v in row.items() if f not in RUN_FIELDS} for k, row in run.rows.items()}
    if args.write:
        DOC.write_text(render(new))
        print(f"{DOC}: {len(new)} rows from run {run.run} ({run.profile} profile)")
        return 0
    current = doc_rows(DOC.read_text()) if DOC.exists() else {}
    missing = sorted(set(new) - set(current))
    stale = sorted(set(current) - recorded_ids())
    hollow = sorted(k for k, row in current.items() if _empty_figures(row))
    if missing or stale or hollow:
        print(
            f"docs/reliability.md is out of date: rows missing {missing}, stale {stale}, "
            f"without figures {hollow}; run `nox -s reliability` to regenerate it",
            file=sys.stderr,
        )
        return 1
    print(
        f"run {run.run} ({run.profile} profile) recorded all {len(new)} rows with their "
        "figures; docs/reliability.md has a row for each"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
