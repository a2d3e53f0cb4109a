"""The version gate shared by the packages' ``_otel_private`` modules."""

from __future__ import annotations

import logging
from importlib import metadata

import pytest

from visiontel._support.gate import VersionGate, release_of


def test_installed_sdk_inside_the_range_opens(caplog: pytest.LogCaptureFixture) -> None:
    found = release_of("opentelemetry-sdk")
    assert found is not None
    _, release = found
    gate = VersionGate("opentelemetry-sdk", (release, release), logger="visiontel.t", instead="x")
    with caplog.at_level(logging.INFO, logger="visiontel.t"):
        assert gate.is_open()
    assert caplog.records == []


def test_outside_the_range_shuts_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(metadata, "version", lambda name: "1.46.0")
    gate = VersionGate(
        "opentelemetry-sdk", ((1, 30), (1, 45)), logger="visiontel.t", instead="public API used"
    )
    with caplog.at_level(logging.INFO, logger="visiontel.t"):
        assert not gate.is_open()
        assert not gate.is_open()
    (record,) = caplog.records
    assert record.getMessage() == (
        "visiontel.t: opentelemetry-sdk 1.46.0 is outside the releases it was tested with "
        "(1.30 to 1.45); public API used"
    )
    monkeypatch.setattr(metadata, "version", lambda name: "1.45.2")
    assert not gate.is_open()  # decided once...
    gate.reset()
    assert gate.is_open()  # ...until reset


def test_absent_or_oddly_numbered_distribution_shuts_silently(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="visiontel.t"):
        gate = VersionGate(
            "no-such-distribution-xyz", ((1, 0), (9, 0)), logger="visiontel.t", instead="x"
        )
        assert not gate.is_open()
        monkeypatch.setattr(metadata, "version", lambda name: "nightly")
        assert release_of("opentelemetry-sdk") is None
    assert caplog.records == []


def test_range_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="oldest, newest"):
        VersionGate("x", ((1, 45), (1, 30)), logger="visiontel.t", instead="x")
