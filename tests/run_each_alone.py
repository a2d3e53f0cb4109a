"""Run every collected test in a pytest process of its own, to prove no test leans on another.

    python tests/run_each_alone.py [--jobs N] [--by-file] -- <pytest args selecting tests>

Collects the node ids that the pytest arguments select, then runs each one alone (or, with
``--by-file``, each test file alone), ``--jobs`` at a time, and prints the ones that failed
with the tail of their output. Exit status 1 when any failed. The `alone` nox session runs
it over the same tests as `tests`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time


def _collect(pytest_args: list[str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly", *pytest_args],
        capture_output=True,
        text=True,
        check=False,
    )
    # Node ids are the lines naming a test file (parameter ids may hold spaces).
    ids = [line for line in out.stdout.splitlines() if os.path.isfile(line.split("::")[0])]
    if out.returncode not in (0, 5) or not ids:
        sys.exit(f"collection failed ({out.returncode}):\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return ids


def _run_alone(node: str, pytest_args: list[str]) -> tuple[str, int, str]:
    # The selecting options (-m EXPR, --ignore=...) still apply, so a test deselected in the
    # full run stays deselected; the paths are dropped and the node id alone picks the test.
    options = [a for a in pytest_args if not os.path.exists(a)]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
    out = subprocess.run(
        [*command, *options, node],
        capture_output=True,
        text=True,
        check=False,
    )
    return node, out.returncode, (out.stdout + out.stderr)[-2500:]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="pytest processes at once")
    parser.add_argument("--by-file", action="store_true", help="one process per test file")
    parser.add_argument("pytest_args", nargs="*", help="what to collect (after --)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    ids = _collect(args.pytest_args)
    if args.by_file:
        ids = sorted({node.split("::")[0] for node in ids})
    print(f"running {len(ids)} {'files' if args.by_file else 'tests'} alone, {args.jobs} at a time")
    started = time.monotonic()
    failed: list[tuple[str, int, str]] = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(_run_alone, node, args.pytest_args) for node in ids]
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            node, status, tail = future.result()
            if status != 0:
                failed.append((node, status, tail))
                print(f"FAILED alone ({status}): {node}", flush=True)
            if done % 25 == 0:
                print(f"  {done}/{len(ids)} in {time.monotonic() - started:.0f} s", flush=True)
    for node, status, tail in failed:
        print(f"\n===== {node} (exit {status}) =====\n{tail}")
    print(f"{len(ids) - len(failed)}/{len(ids)} passed alone in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
