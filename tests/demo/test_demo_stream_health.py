"""`visiontel demo --drop-every N`: the frames the source drops are the frames the hops lose.

Two short unpaced runs (a few seconds of frames each, most of the time is importing torch):
one where the source skips every 7th sequence number, one where it skips none. Checked
from the OTLP JSON files the services wrote (``visiontel.frames.lost`` and
``visiontel.frames.received`` per stream at the detector and the tracker), and through the
closing report's stream health table, which is built from the same files.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import pytest
from demo_support import clean_env, one_line_error, run_visiontel

from visiontel.demo import _report

STREAM = "camera-0"
FRAMES = 40
DROP_EVERY = 7
# Sequence numbers 6, 13, 20, ...: one skipped before every 6 frames sent.
DROPPED = FRAMES // (DROP_EVERY - 1)


def _demo(tmp: pathlib.Path, *flags: str) -> tuple[Any, pathlib.Path]:
    result = run_visiontel(
        "demo", "--frames", str(FRAMES), "--fps", "0", *flags, cwd=tmp, env=clean_env()
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    assert re.search(rf"frames {FRAMES}/{FRAMES} ", result.stdout), result.stdout
    (run_dir,) = (tmp / "visiontel-output").iterdir()
    return result, run_dir


@pytest.fixture(scope="module")
def dropping_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, pathlib.Path]:
    return _demo(tmp_path_factory.mktemp("drop"), "--drop-every", str(DROP_EVERY))


@pytest.fixture(scope="module")
def dropping(dropping_run: tuple[Any, pathlib.Path]) -> pathlib.Path:
    return dropping_run[1]


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return _demo(tmp_path_factory.mktemp("whole"))[1]


def _last(run_dir: pathlib.Path, service: str, name: str) -> list[dict[str, Any]]:
    """Data points of ``name`` in the service's last export (cumulative: the totals)."""
    last: list[dict[str, Any]] = []
    for line in (run_dir / service / "metrics.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        for rm in json.loads(line)["resourceMetrics"]:
            for scope in rm["scopeMetrics"]:
                for metric in scope["metrics"]:
                    if metric["name"] == name:
                        data = metric.get("sum") or metric.get("histogram") or {}
                        last = data["dataPoints"]
    return last


def _per_stream(run_dir: pathlib.Path, service: str, name: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for point in _last(run_dir, service, name):
        attrs = {a["key"]: a["value"].get("stringValue") for a in point["attributes"]}
        out[str(attrs["visiontel.stream.id"])] = int(point["asInt"])
    return out


def _table_row(run_dir: pathlib.Path) -> list[int]:
    lines = _report.stream_health(run_dir)
    assert lines[0].startswith("Stream health"), lines
    (row,) = [line for line in lines[2:] if line.split()[0] == STREAM]
    return [int(cell) for cell in row.replace("|", " ").split()[1:]]


def test_lost_frames_equal_the_frames_dropped(dropping: pathlib.Path) -> None:
    assert _per_stream(dropping, "frame-source", "visiontel.demo.frames.dropped") == {
        STREAM: DROPPED
    }
    assert _per_stream(dropping, "frame-source", "visiontel.demo.frames.sent") == {STREAM: FRAMES}
    for hop in ("detector", "tracker"):
        assert _per_stream(dropping, hop, "visiontel.frames.lost") == {STREAM: DROPPED}, hop
        assert _per_stream(dropping, hop, "visiontel.frames.received") == {STREAM: FRAMES}, hop


def test_the_report_shows_sent_dropped_received_and_lost(dropping: pathlib.Path) -> None:
    # sent, dropped | detector received, lost | tracker received, lost
    assert _table_row(dropping) == [FRAMES, DROPPED, FRAMES, DROPPED, FRAMES, DROPPED]


def test_frames_carry_the_sequence_numbers_the_source_gave(dropping: pathlib.Path) -> None:
    sequences = set()
    for line in (dropping / "frame-source" / "traces.jsonl").read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for scope in rs["scopeSpans"]:
                for span in scope["spans"]:
                    for attr in span.get("attributes", []):
                        if attr["key"] == "visiontel.frame.sequence":
                            sequences.add(int(attr["value"]["intValue"]))
    skipped = set(range(DROP_EVERY - 1, FRAMES + DROPPED, DROP_EVERY))
    assert len(skipped) == DROPPED
    assert sequences == set(range(FRAMES + DROPPED)) - skipped


def test_the_detector_reports_its_queue(dropping: pathlib.Path) -> None:
    (depth,) = _last(dropping, "detector", "visiontel.batcher.queue.depth")
    assert int(depth["asInt"]) == 0  # drained at the end
    (wait,) = _last(dropping, "detector", "visiontel.batcher.wait.duration")
    assert int(wait["count"]) == FRAMES + 1  # every frame, and the end-of-stream message
    assert float(wait["sum"]) > 0


def test_nothing_is_lost_without_drops(whole: pathlib.Path) -> None:
    for hop in ("detector", "tracker"):
        assert _per_stream(whole, hop, "visiontel.frames.lost") in ({}, {STREAM: 0}), hop
        assert _per_stream(whole, hop, "visiontel.frames.received") == {STREAM: FRAMES}, hop
    assert _table_row(whole) == [FRAMES, 0, FRAMES, 0, FRAMES, 0]


def test_drop_every_one_is_refused(run) -> None:
    one_line_error(run("demo", "--drop-every", "1"), "--drop-every", "2 or more")


def test_the_closing_report_prints_the_table(dropping_run: tuple[Any, pathlib.Path]) -> None:
    out = dropping_run[0].stdout
    row = rf"{STREAM} +{FRAMES} +{DROPPED} \| +{FRAMES} +{DROPPED} \| +{FRAMES} +{DROPPED}\n"
    assert "Stream health" in out and re.search(row, out), out
