"""Headless Chromium (Debian's, `toolchain.py chromium`) for the tests that look at a page
as a person would: the DOM after the page's scripts ran, and a screenshot kept as an
artifact (its path is printed, and it is copied to $VISIONTEL_ARTIFACTS when set)."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess

import pytest


def chromium_path() -> str:
    """Chromium's path, or a skip naming the resource (the stack session provides it)."""
    path = os.environ.get("VISIONTEL_CHROMIUM") or shutil.which("chromium") or ""
    if not os.access(path, os.X_OK):
        pytest.skip(
            "needs chromium: set VISIONTEL_CHROMIUM (`python collector-config/toolchain.py "
            "chromium` installs Debian's) or run `nox -s stack`"
        )
    return path


def run_chromium(chromium: str, *args: str, timeout: float = 120) -> str:
    """Headless Chromium with a throw-away profile; its output (stdout)."""
    profile = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"visiontel-chromium-{os.getpid()}"
    proc = subprocess.Popen(
        [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
         "--no-first-run", "--hide-scrollbars", "--window-size=1600,1000",
         f"--user-data-dir={profile}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its renderer and GPU processes share our child's group
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium {args} ran past {timeout} s") from None
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, (proc.returncode, err[-3000:])
    return out


def rendered_dom(chromium: str, url: str, *needles: str) -> str:
    """The page's DOM once its scripts have run, with longer virtual-time budgets until
    every needle is in it (single-page apps fetch, then render); the last DOM otherwise."""
    dom = ""
    for budget in (15000, 30000, 60000):
        dom = run_chromium(chromium, f"--virtual-time-budget={budget}", "--dump-dom", url)
        if all(needle in dom for needle in needles):
            break
    return dom


def screenshot(chromium: str, url: str, path: pathlib.Path) -> pathlib.Path:
    """A PNG of the rendered page at `path`, kept as an artifact."""
    run_chromium(chromium, "--virtual-time-budget=30000", f"--screenshot={path}", url)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000, (url, len(data))
    print(f"\nscreenshot of {url}: {path}")
    artifacts = os.environ.get("VISIONTEL_ARTIFACTS")
    if artifacts:
        pathlib.Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, pathlib.Path(artifacts) / path.name)
    return path
