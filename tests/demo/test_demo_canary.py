"""Canary mode on an image-folder source: two model versions side by side in one run."""

from __future__ import annotations

import collections
import json
import pathlib
import re

import numpy as np
import pytest
from demo_support import run_visiontel

cv2 = pytest.importorskip(
    "cv2", reason="needs cv2: opencv-python-headless (the test extra) is missing"
)

IMAGES = 24


def _points(path: pathlib.Path, name: str) -> list[dict]:
    last: list[dict] = []
    for line in path.read_text().splitlines():
        for rm in json.loads(line)["resourceMetrics"]:
            for scope in rm["scopeMetrics"]:
                for metric in scope["metrics"]:
                    if metric["name"] == name:
                        data = metric.get("histogram") or metric.get("sum")
                        last = data["dataPoints"]
    return last


def _version(point: dict) -> str:
    attrs = {a["key"]: a["value"].get("stringValue") for a in point["attributes"]}
    return attrs["visiontel.model.version"]


def test_canary_on_an_image_folder(tmp_path: pathlib.Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(7)
    for index in range(IMAGES):
        cv2.imwrite(str(images / f"{index:03d}.png"), rng.integers(0, 255, (120, 160, 3), np.uint8))
    result = run_visiontel(
        "demo", "--source", str(images), "--frames", "0", "--fps", "0",
        "--canary-version", "2.0-canary", "--canary-fraction", "0.5",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout, result.stderr)
    shares = re.search(r"frames per model version: 1\.0: (\d+), 2\.0-canary: (\d+)", result.stdout)
    assert shares, result.stdout
    stable, canary = int(shares.group(1)), int(shares.group(2))
    assert stable + canary == IMAGES and stable > 0 and canary > 0
    (run_dir,) = (tmp_path / "visiontel-output").iterdir()

    images_per_version = {
        _version(p): int(p["asInt"])
        for p in _points(run_dir / "detector" / "metrics.jsonl", "visiontel.inference.images")
    }
    assert images_per_version == {"1.0": stable, "2.0-canary": canary}
    latency = _points(run_dir / "tracker" / "metrics.jsonl", "visiontel.frame.latency")
    assert {_version(p): int(p["count"]) for p in latency} == images_per_version

    versions: collections.Counter[str] = collections.Counter()
    kinds = set()
    for line in (run_dir / "detector" / "traces.jsonl").read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for scope in rs["scopeSpans"]:
                for span in scope["spans"]:
                    if span["name"] == "inference tinydet":
                        attrs = {a["key"]: a["value"] for a in span["attributes"]}
                        versions[attrs["visiontel.model.version"]["stringValue"]] += 1
    assert versions == {"1.0": stable, "2.0-canary": canary}
    for line in (run_dir / "frame-source" / "traces.jsonl").read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for scope in rs["scopeSpans"]:
                for span in scope["spans"]:
                    attrs = {a["key"]: a["value"] for a in span["attributes"]}
                    kinds.add(attrs["visiontel.source.kind"]["stringValue"])
    assert kinds == {"folder"}
