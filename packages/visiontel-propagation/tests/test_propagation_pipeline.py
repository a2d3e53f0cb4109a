"""Acceptance: decoder -> batched detector -> sink, three processes over real gRPC.

Every process exports its spans to a JSON-lines file; together they must form one
trace per frame, spanning all three processes, with each batch span linked to
every frame it contained and the sink recording each frame's latency.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections import defaultdict

import pytest

STAGE = str(pathlib.Path(__file__).with_name("pipeline_stage.py"))
FRAMES, BATCH = 12, 4


def start(*args: object) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, STAGE, *map(str, args)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PORT "), f"{args[0]} did not start: {line!r}"
    return proc, int(line.split()[1])


def read(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("pipeline")
    sink, sink_port = start("sink", out, FRAMES)
    detector, detector_port = start("detector", out, FRAMES, BATCH, sink_port)
    try:
        decoder = subprocess.run(
            [sys.executable, STAGE, "decoder", str(out), str(FRAMES), str(detector_port)],
            timeout=120,
            check=False,
        )
        assert decoder.returncode == 0
        assert detector.wait(timeout=120) == 0
        assert sink.wait(timeout=120) == 0
    finally:
        for proc in (sink, detector):
            if proc.poll() is None:
                proc.kill()
    return out


def test_one_trace_per_frame_across_three_processes(pipeline):
    spans = [
        s for stage in ("decoder", "detector", "sink") for s in read(pipeline / f"{stage}.jsonl")
    ]
    traces: dict[str, list[dict]] = defaultdict(list)
    for span in spans:
        traces[span["trace_id"]].append(span)
    decode = [s for s in spans if s["name"] == "decode"]
    assert len(decode) == FRAMES
    assert len({s["trace_id"] for s in decode}) == FRAMES
    for root in decode:
        members = traces[root["trace_id"]]
        assert {s["service"] for s in members} == {"decoder", "detector", "sink"}
        by_name = {s["name"]: s for s in members}
        assert set(by_name) == {"decode", "detect batch member", "send result", "track"}
        # a chain: decode -> batch member -> send result -> track
        assert by_name["detect batch member"]["parent"] == root["span_id"]
        assert by_name["send result"]["parent"] == by_name["detect batch member"]["span_id"]
        assert by_name["track"]["parent"] == by_name["send result"]["span_id"]
        seq = root["attributes"]["visiontel.frame.sequence"]
        assert by_name["track"]["attributes"]["visiontel.frame.sequence"] == seq
        assert by_name["track"]["attributes"]["visiontel.frame.age"] > 0


def test_batch_spans_link_every_frame(pipeline):
    detector = read(pipeline / "detector.jsonl")
    decode = read(pipeline / "decoder.jsonl")
    batches = [s for s in detector if s["name"] == "detect batch"]
    assert len(batches) == FRAMES // BATCH
    linked = [tuple(link) for b in batches for link in b["links"]]
    assert sorted(linked) == sorted((s["trace_id"], s["span_id"]) for s in decode)
    assert all(b["attributes"]["messaging.batch.message_count"] == BATCH for b in batches)
    batch_ids = {b["span_id"] for b in batches}
    members = [s for s in detector if s["name"] == "detect batch member"]
    assert {m["links"][0][1] for m in members} == batch_ids
    # each batch is a trace of its own, not part of any frame's
    assert not {b["trace_id"] for b in batches} & {s["trace_id"] for s in decode}


def test_sink_records_latency_of_every_frame(pipeline):
    (point,) = json.loads((pipeline / "latency.json").read_text())
    assert point["count"] == FRAMES
    assert point["attributes"] == {"visiontel.frame.stream_id": "cam-1"}
    assert 0 < point["sum"] / FRAMES < 60
