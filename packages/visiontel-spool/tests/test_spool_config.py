"""Settings, a second process on the same directory, gRPC, and damaged spool files."""

from __future__ import annotations

import logging
import struct
import zlib

import pytest
from spool_support import batches

from visiontel.spool import SpoolSpanExporter, _diag, dropped_counts
from visiontel.spool._spool import HEADER, MAGIC


def test_malformed_environment_falls_back_and_says_so(otlp_env, monkeypatch, caplog):
    monkeypatch.setenv("VISIONTEL_SPOOL_MAX_BYTES", "lots")
    monkeypatch.setenv("VISIONTEL_SPOOL_MAX_BACKOFF", "-3")
    with caplog.at_level(logging.WARNING, logger="visiontel.spool"):
        exporter = SpoolSpanExporter()
    assert exporter._core.spool.max_bytes == _diag.DEFAULT_MAX_BYTES
    assert exporter._core.max_backoff_s == _diag.DEFAULT_MAX_BACKOFF_S
    assert (
        "VISIONTEL_SPOOL_MAX_BYTES" in caplog.text and "VISIONTEL_SPOOL_MAX_BACKOFF" in caplog.text
    )
    exporter.shutdown()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_bytes": 10}, ValueError),
        ({"max_bytes": "1"}, TypeError),  # a wrong type: TypeError, the workspace policy
        ({"max_backoff": 0}, ValueError),
        ({"max_backoff": 0.01}, ValueError),  # the variable's minimum holds for arguments too
    ],
)
def test_malformed_arguments_raise(otlp_env, kwargs, error):
    with pytest.raises(error, match="must be"):
        SpoolSpanExporter(**kwargs)


def test_default_directory_is_per_application_under_xdg_state(monkeypatch, tmp_path):
    monkeypatch.delenv("VISIONTEL_SPOOL_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setenv("OTEL_SERVICE_NAME", "detector/cam 1")
    assert _diag.directory_setting(None) == tmp_path / "visiontel" / "spool" / "detector_cam_1"


def test_second_owner_exports_without_spool_then_takes_over(receiver, otlp_env, caplog):
    first = SpoolSpanExporter()
    with caplog.at_level(logging.WARNING, logger="visiontel.spool"):
        second = SpoolSpanExporter()
    assert first.stats()["owned"] and not second.stats()["owned"]
    assert "in use by another process" in caplog.text
    sent = batches(2)
    assert second.export(sent[0]).name == "SUCCESS"  # straight through the OTLP exporter
    assert receiver.span_names() == [s.name for s in sent[0]]
    first.shutdown()
    second._core._next_open = 0.0  # its next periodic try is now
    second.export(sent[1])
    assert second.stats()["owned"]
    second.shutdown()


def test_grpc_protocol_is_spooled_too(otlp_env, monkeypatch, caplog):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with caplog.at_level(logging.INFO, logger="visiontel.spool"):
        exporter = SpoolSpanExporter()
    assert type(exporter._inner).__module__.startswith("opentelemetry.exporter.otlp.proto.grpc")
    assert exporter.stats()["owned"] and (otlp_env / "traces" / ".lock").exists()
    assert "grpc" not in caplog.text.lower()  # nothing to warn about
    exporter.shutdown()


def _file(directory, seq: int, data: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{seq:020d}.batch").write_bytes(data)


def test_damaged_files_are_discarded_and_counted_never_raised(receiver, otlp_env):
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    directory = otlp_env / "traces"
    good = [encode_spans(b).SerializePartialToString() for b in batches(2, per_batch=2)]
    whole = lambda body, items=2: HEADER.pack(MAGIC, items, len(body), zlib.crc32(body)) + body  # noqa: E731
    _file(directory, 1, whole(good[0]))
    _file(directory, 2, b"garbage")  # no header
    _file(directory, 3, whole(good[1])[:-5])  # cut short
    bad_crc = bytearray(whole(good[1]))
    bad_crc[-1] ^= 0xFF
    _file(directory, 4, bytes(bad_crc))  # bit flip in the body
    _file(directory, 5, struct.pack("<8sIQI", b"OTHERFMT", 2, 0, 0))  # not ours
    _file(directory, 6, whole(good[1]))
    (directory / ".tmp-00000000000000000007-123").write_bytes(b"half a batch")
    exporter = SpoolSpanExporter()
    assert not list(directory.glob(".tmp-*"))
    assert exporter.force_flush(30_000)
    assert len(receiver.requests) == 2  # the two whole files, in order
    assert exporter.stats()["corrupt_batches"] == 4
    assert dropped_counts()[("traces", "corrupt")] == 2  # items known from a valid header
    exporter.shutdown()


def test_the_readme_table_lists_every_variable_the_code_reads():
    import re
    from pathlib import Path

    import visiontel.spool as package

    source = "".join(p.read_text() for p in Path(package.__file__).parent.glob("*.py"))
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| ")]
    variables = set(re.findall(r"VISIONTEL_SPOOL_[A-Z_]+", source))
    assert variables == {
        "VISIONTEL_SPOOL_DIR",
        "VISIONTEL_SPOOL_MAX_BYTES",
        "VISIONTEL_SPOOL_MAX_BACKOFF",
    }
    for name in variables:
        assert any(f"`{name}`" in line for line in table), name
