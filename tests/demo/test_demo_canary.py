"""Canary mode on an image-folder source: two model versions side by side in one run."""

from __future__ import annotations

import collections
import json
import pathlib
import re

import numpy as np
import pytest
from demo_support import clean_env, one_line_error, run_visiontel

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


def _gate_rows(stdout: str) -> dict[str, str]:
    """Rows of the report's gate table: label -> verdict (last word)."""
    lines = stdout.split("the gates of collector-config/canary/", 1)[1].splitlines()[2:8]
    return {line[2:24].strip(): line.split()[-1] for line in lines}


def test_canary_report_puts_versions_side_by_side(tmp_path: pathlib.Path) -> None:
    result = run_visiontel(
        # 1.1 and 2.1 detect alike (random versions need not: 1.0 and 2.0 differ 3x).
        # 300 frames: over 100 forwards per version, so the nearest-rank p99 is not the
        # single slowest forward, each version's first (warm-up) call, which on a loaded
        # machine can take longer than the injected delay.
        "demo", "--frames", "300", "--fps", "0", "--model-version", "1.1",
        "--canary-version", "2.1", "--canary-fraction", "0.5", "--canary-fault", "slow",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout, result.stderr)
    out = result.stdout
    # One row per stage, stable and canary in columns (not one row per version).
    header = next(line for line in out.splitlines() if "stable 1.1" in line and "|" in line)
    assert "canary 2.1" in header
    table = out.split("Per-stage latency (ms), by the model version", 1)[1].split("\n\n", 1)[0]
    inference = [line for line in table.splitlines() if line.split()[1:2] == ["inference"]]
    assert len(inference) == 1 and inference[0].count("|") == 1, inference
    stable_cells, canary_cells = inference[0].split("|")
    assert int(stable_cells.split()[-3]) + int(canary_cells.split()[0]) == 300
    rows = _gate_rows(out)
    assert set(rows) == {
        "frames", "forward p50 (ms)", "forward p99 (ms)", "detections per image",
        "error rate", "GPU memory (last)",
    }  # fmt: skip
    # 40 ms more per forward: the latency gate fails, the others hold.
    assert rows["forward p99 (ms)"] == "FAIL"
    assert rows["frames"] == rows["error rate"] == rows["GPU memory (last)"] == "pass"
    assert rows["detections per image"] == "pass", out
    assert "verdict: roll back (forward p99 (ms))" in out


def test_canary_report_catches_an_overdetecting_canary(tmp_path: pathlib.Path) -> None:
    result = run_visiontel(
        "demo", "--frames", "60", "--fps", "0", "--model-version", "1.1",
        "--canary-version", "2.1", "--canary-fraction", "0.5", "--canary-fault", "overdetect",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout, result.stderr)
    rows = _gate_rows(result.stdout)
    assert rows["detections per image"] == "FAIL", result.stdout
    line = next(x for x in result.stdout.splitlines() if x.startswith("  detections per image"))
    stable, canary = (float(x) for x in line.split()[3:5])
    assert canary > 2 * stable, line


@pytest.mark.parametrize(
    ("args", "env", "needles"),
    [
        (("--canary-version", "2", "--canary-fault", "bogus"), {},
         ("'bogus'", "overdetect", "slow")),
        (("--canary-fault", "slow"), {}, ("--canary-version",)),
        (("--canary-version", "2", "--canary-fault", "slow", "--model", "yolov8n"), {},
         ("tinydet", "yolov8n")),
    ],
)  # fmt: skip
def test_bad_canary_fault_is_one_line(
    tmp_path: pathlib.Path, args: tuple[str, ...], env: dict[str, str], needles: tuple[str, ...]
) -> None:
    result = run_visiontel("demo", *args, cwd=tmp_path, env={**clean_env(), **env})
    one_line_error(result, "--canary-fault", *needles)


def test_report_thresholds_are_the_templates_defaults() -> None:
    from visiontel.demo import _canary

    root = pathlib.Path(__file__).resolve().parents[2]
    text = (root / "collector-config" / "canary" / "argo" / "analysis-template.yaml").read_text()
    # The args block: "- name: NAME  # comment" then 'value: "X"' (no YAML parser in this venv).
    defaults = {
        name: float(value)
        for name, value in re.findall(
            r'- name: ((?:min|max)-[\w-]+)[^\n]*\n\s+value: "([\d.]+)"', text
        )
    }
    assert defaults == {
        "min-canary-images-per-second": _canary.MIN_CANARY_IMAGES_PER_SECOND,
        "max-p99-ratio": _canary.MAX_P99_RATIO,
        "max-error-ratio": _canary.MAX_ERROR_RATIO,
        "max-detections-drift": _canary.MAX_DETECTIONS_DRIFT,
        "max-gpu-memory-ratio": _canary.MAX_GPU_MEMORY_RATIO,
    }
