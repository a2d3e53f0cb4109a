"""Share of the demo detector's CPU that telemetry takes, from one run (py-spy samples).

    python bench/cpu_share.py --model ssdlite          # needs py-spy (pip install py-spy)
    python bench/cpu_share.py --seconds 40 --rate 200  # tinydet, more samples

`bench/pipeline.py` compares whole runs, and on a shared machine whole runs drift by more
than the few per cent in question. This reads one instrumented run from the inside: it
starts `visiontel demo --fps 0` (telemetry on, the embedded default), attaches py-spy to
the detector process once frames flow and classifies every sample of every thread:

- telemetry: the innermost frame of OpenTelemetry, visiontel-torch/-propagation/-gpu or the
  demo's OTLP JSON writers, unless a model forward runs below it (a hook that wraps a
  forward charges the forward to the model);
- waiting: a thread parked in a wait, sleep or poll (py-spy's idle detection misses some);
- other: the model, gRPC, the demo itself.

Drift in the machine's speed moves both sides of a share alike, so one run gives a stable
figure. Two implied throughput ratios are printed: if the detector's main thread bounds the
pipeline and the other threads run on spare cores, 1 - (telemetry share of that thread);
if every core is busy, 1 - (telemetry share of all the process's active samples).
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

_TELEMETRY = (
    "/opentelemetry/",
    "/visiontel/torch/",
    "/visiontel/propagation/",
    "/visiontel/gpu/",
    "/google/protobuf/",
)
_MODEL = ("/torch/", "/torchvision/")
# Innermost Python frames that block in C. Not Queue.get: a blocked get ends in
# Condition.wait, so a sample whose innermost frame is get itself is running.
_WAITING = re.compile(r"^(wait|_wait_for_tstate_lock|sleep|select|poll|accept)\b")
_PROGRESS = re.compile(rb"frames (\d+)/(\d+)")


def _is_telemetry(path: str) -> bool:
    return any(part in path for part in _TELEMETRY)


def _is_model(path: str) -> bool:
    return any(part in path for part in _MODEL) and "/visiontel/" not in path


def classify(frames: list[str]) -> str:
    """'telemetry', 'waiting' or 'other' for one sampled stack (outermost frame first)."""
    paths = [f.rpartition("(")[2] for f in frames]
    innermost = frames[-1].split(" (")[0].rpartition(".")[2] if frames else ""
    if _WAITING.match(innermost):
        return "waiting"
    marks = [i for i, p in enumerate(paths) if _is_telemetry(p)]
    if marks and not any(_is_model(p) for p in paths[marks[-1] + 1 :]):
        return "telemetry"
    return "other"


def _detector_pid(parent: int) -> int | None:
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent_pid = int(stat.rpartition(")")[2].split()[1])
        if parent_pid == parent and b"visiontel.demo._child" in command and b"detector" in command:
            return int(entry.name)
    return None


def _watch_progress(stream: object, seen: list[int]) -> None:
    buffer = b""
    for chunk in iter(lambda: stream.read1(4096), b""):  # type: ignore[attr-defined]
        buffer = (buffer + chunk)[-4096:]
        for match in _PROGRESS.finditer(buffer):
            seen[0] = max(seen[0], int(match.group(1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tinydet", help="the demo's --model (default tinydet)")
    parser.add_argument("--frames", type=int, default=0, help="frames to run (default: enough)")
    parser.add_argument("--seconds", type=float, default=25.0, help="sampling time (default 25)")
    parser.add_argument("--rate", type=int, default=100, help="samples per second (default 100)")
    parser.add_argument("--warmup", type=int, default=20, help="frames before sampling starts")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(pathlib.Path(sys.executable).with_name("py-spy"))
    if not os.access(spy, os.X_OK):
        raise SystemExit("py-spy not found: pip install py-spy")
    frames = args.frames or int(args.seconds * (100 if args.model == "tinydet" else 15) * 2)
    with tempfile.TemporaryDirectory(prefix="visiontel-share-") as output:
        command = [sys.executable, "-m", "visiontel.cli", "demo", "--model", args.model]
        command += ["--frames", str(frames), "--fps", "0", "--output", output]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VISIONTEL_"))}
        demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        seen = [0]
        threading.Thread(target=_watch_progress, args=(demo.stdout, seen), daemon=True).start()
        pid = None
        deadline = time.monotonic() + 300
        while (pid is None or seen[0] < args.warmup) and demo.poll() is None:
            if time.monotonic() > deadline:
                demo.kill()
                raise SystemExit("the demo sent no frames within 300 s")
            pid = pid or _detector_pid(demo.pid)
            time.sleep(0.2)
        if pid is None or demo.poll() is not None:
            raise SystemExit(f"the demo ended before sampling (exit {demo.returncode})")
        raw = pathlib.Path(output) / "detector.spy"
        spy_run = [spy, "record", "-p", str(pid), "-d", str(int(args.seconds)), "-r"]
        spy_run += [str(args.rate), "--threads", "--full-filenames", "--format", "raw"]
        spy_run += ["-o", str(raw)]
        sampled = subprocess.run(spy_run, check=False, capture_output=True, text=True)
        at_end = seen[0]
        demo.wait()
        if sampled.returncode != 0 or not raw.exists():
            raise SystemExit(f"py-spy failed ({sampled.returncode}): {sampled.stderr.strip()}")
        if at_end >= frames:
            print(f"warning: the run ended while sampling ({at_end} frames): use more --frames")
        report(raw.read_text(), args.model, demo.returncode)


def report(raw: str, model: str, exit_code: int | None) -> None:
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\): ", "", frames[0])
        thread = re.sub(r"^(Thread-\d+ \(\w+\)|thread \(\d+\))$", "other threads", thread)
        counts[thread][classify(frames[1:])] += int(count)
    active = {t: c["telemetry"] + c["other"] for t, c in counts.items()}
    total = sum(active.values())
    if not total:
        raise SystemExit("py-spy recorded no active samples")
    print(f"detector, model {model}, demo exit {exit_code}: {total} active samples")
    print("| thread | share of active samples | of which telemetry | waiting (not counted) |")
    print("|---|---:|---:|---:|")
    for thread, n in sorted(active.items(), key=lambda kv: -kv[1]):
        c = counts[thread]
        print(f"| {thread} | {n / total:.1%} | {c['telemetry'] / total:.1%} | {c['waiting']} |")
    tele = sum(c["telemetry"] for c in counts.values())
    main = counts.get("MainThread", collections.Counter())
    main_share = main["telemetry"] / max(1, main["telemetry"] + main["other"])
    print(f"telemetry: {main_share:.1%} of the main thread, {tele / total:.1%} of the process")
    print(f"implied throughput on/off: {1 - main_share:.3f} (main thread bounds, spare cores) "
          f"to {1 - tele / total:.3f} (every core busy)")  # fmt: skip


if __name__ == "__main__":
    main()
