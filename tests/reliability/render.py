"""Render docs/reliability.md from the rows the reliability tests recorded.

    python tests/reliability/render.py RESULTS.jsonl --write   # update the doc (full profile)
    python tests/reliability/render.py RESULTS.jsonl --check   # the doc has a row for each

Every row of the table comes from a test (tests/reliability/reliability_support.append_row).
The rows are also kept as JSON at the end of the doc, so a run of a few tests (`-k`)
replaces only their rows. --check fails when a test recorded a row id the committed doc
lacks, or when the doc holds a row no test records any more.
"""

from __future__ import annotations

import argparse
import json
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

HEADER = """# Reliability

What visiontel does when things go wrong: the collector is down or slow, the GPU or its
driver fails, the inference threads are loaded, the input is hostile, secrets are around.
Each row below was written by a test of `tests/reliability/` (the `reliability` nox
session runs the full profile and regenerates this page; `reliability_short`, part of
`nox -t ci`, runs shorter outages and load and checks that this page has a row for every
fault). The *profile* column says which run produced the figures.

Bounds the tests assert are stated in the "What was measured" column; a row exists only
if its test ran, and the session fails if any assertion failed.

How to read the figures:

* **Throughput** ratios compare the median, over one-second chunks, of frames per second of
  process CPU time (the machines these ran on are 2 shared cores, where wall-clock frame
  rates move by ±20 % with the neighbours' load); the wall-clock ratio is given beside it.
  The slow-collector test alternates prompt and slow phases for the same reason. CPU time
  is noisy there too: with the receiver prompt in both phases the same comparison read
  0.85–1.06, so the asserted floor is 0.80 (a fault itself should read ≥ 1: the exporter
  does less work while it waits or fails).
* **Stalls** are the longest gap between two consecutive frames of an inference thread;
  waiting on an export would show up as a gap of the export's timeout or delay (3 s).
* **Memory** is the growth of the test process's resident set size (Linux `statm`), which
  includes the test's own per-frame ledger. The suite runs with `pytest -p no:logging`:
  pytest's log capture would keep the exporter's retry records, and through their
  tracebacks the batches being retried, alive.
* **Lost spans** are counted by the test: every span ended is tallied in-process, every
  span stored is read back from the collector's file exporter output.

"""


def load_rows(results: pathlib.Path) -> list[dict[str, str]]:
    rows = []
    for line in results.read_text().splitlines() if results.exists() else []:
        if line.strip():
            rows.append(json.loads(line))
    return rows


def doc_rows(text: str) -> dict[str, dict[str, str]]:
    """The rows kept at the end of the doc, by id."""
    if MARKER not in text:
        return {}
    block = text.split(MARKER, 1)[1]
    match = re.search(r"<!--\n(.*)\n-->", block, re.S)
    return {r["id"]: r for r in json.loads(match.group(1))} if match else {}


def recorded_ids() -> set[str]:
    """Row ids the tests record: the first argument of every record("...") call."""
    ids: set[str] = set()
    for path in SUITE.glob("test_*.py"):
        ids.update(re.findall(r"\brecord\(\s*\"([a-z0-9-]+)\"", path.read_text()))
    return ids


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
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    new = {r["id"]: r for r in load_rows(args.results)}
    current = doc_rows(DOC.read_text()) if DOC.exists() else {}
    if args.write:
        merged = {k: v for k, v in current.items() if k in recorded_ids()}
        merged.update(new)
        DOC.write_text(render(merged))
        print(f"{DOC}: {len(new)} rows updated, {len(merged)} in all")
        return 0
    missing = sorted(set(new) - set(current))
    stale = sorted(set(current) - recorded_ids())
    if missing or stale:
        print(
            f"docs/reliability.md is out of date: rows missing {missing}, stale {stale}; "
            "run `nox -s reliability` to regenerate it",
            file=sys.stderr,
        )
        return 1
    print(f"docs/reliability.md has a row for each of the {len(new)} faults measured")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
