"""Hostile input: every extract path of visiontel-propagation and every environment-variable
parser of the suite, fed random and near-valid values (hypothesis), must never raise, and
whatever comes through stays inside the documented limits."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from reliability_support import PROFILE, ROOT

import visiontel.propagation as vp
import visiontel.torch._config as torch_config_module

EXAMPLES = settings(
    max_examples=PROFILE.hypothesis_examples,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
OUR_KEYS = ["traceparent", "tracestate", "baggage", "visiontel-frame", "grpc-trace-bin"]
KEYS = st.one_of(st.sampled_from(OUR_KEYS + [k.upper() for k in OUR_KEYS]), st.text(max_size=20))
VALID_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACEPARENT = st.from_regex(r"\A00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]\Z")
NEAR = st.one_of(
    TRACEPARENT,
    st.from_regex(r"\A[0-9a-f]{2}-[0-9a-fA-F]{0,34}-[0-9a-f]{0,18}-[0-9a-f]{0,3}(-.*)?\Z"),
    st.from_regex(r"\A[^;]{0,300};-?[0-9]{0,25};[0-9]{0,25}\Z"),  # visiontel-frame
    st.from_regex(r"\A([^,=]{0,9}=[^,]{0,40}(;p=1)?,){0,200}\Z"),  # baggage
    st.from_regex(r"\A([a-z]{1,8}=[a-z0-9]{1,8},){0,40}\Z"),  # tracestate
)
# Well-formed frame headers with random (also over-long) stream ids: these reach the
# attributes of the spans made downstream.
FRAME = st.builds(
    lambda stream, seq, ts: f"{quote(stream, safe='')};{seq};{ts}",
    st.text(min_size=1, max_size=200),
    st.integers(0, 2**64),
    st.integers(0, 2**64),
)
HUGE = st.integers(min_value=8_000, max_value=70_000).map(lambda n: "a" * n)
VALUES = st.one_of(
    st.text(max_size=400),
    st.binary(max_size=400),
    NEAR,
    FRAME,
    FRAME,
    HUGE,
    st.none(),
    st.integers(),
    st.lists(st.text(max_size=20), max_size=3),
)
PAIRS = st.lists(st.tuples(st.one_of(KEYS, st.binary(max_size=20)), VALUES), max_size=300)
CARRIERS = st.one_of(
    PAIRS, st.dictionaries(KEYS, VALUES, max_size=20), st.text(max_size=50), st.none()
)


class _Errors(logging.Handler):
    """visiontel.propagation logs a bug of its own at ERROR: none may appear."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# Function-scoped (each test its own): a failure logged by one test must not fail another.
# The property tests run their hypothesis examples inside one call, so fixtures are set up
# once per test, not per example.
@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def internal_errors() -> Iterator[_Errors]:
    handler = _Errors()
    logger = logging.getLogger("visiontel.propagation")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _extract_everywhere(carrier: Any) -> list[Context]:
    slot = bytes(carrier) if isinstance(carrier, bytes | bytearray) else b""
    propagator = vp.FramePropagator()
    return [
        vp.extract_dict(carrier),  # type: ignore[arg-type]
        vp.extract_http(carrier),
        vp.extract_grpc(carrier),  # type: ignore[arg-type]
        vp.extract_mq(carrier),
        vp.extract_slot(slot.ljust(vp.SLOT_SIZE, b"\0")),
        propagator.extract(carrier if isinstance(carrier, dict) else {}),
    ]


def test_every_extract_path_takes_hostile_carriers(spans, internal_errors, record):
    """The property, and the row: the test counts its own examples (no other test's)."""
    provider, exporter = spans
    tracer = provider.get_tracer("hostile")
    limits = vp.limits()
    stats = {"examples": 0, "contexts_with_frame": 0}

    @EXAMPLES
    @given(carrier=CARRIERS)
    @example(carrier={"traceparent": VALID_TRACEPARENT, "visiontel-frame": "cam-1;7;1"})
    @example(carrier=[("traceparent", VALID_TRACEPARENT.encode()), ("visiontel-frame", b"c;1;1")])
    def extract_everywhere(carrier):
        exporter.clear()
        for ctx in _extract_everywhere(carrier):
            assert isinstance(ctx, Context)
            frame = vp.get_frame(ctx)
            if frame is not None:
                stats["contexts_with_frame"] += 1
                assert 0 < len(frame.stream_id) <= limits.max_stream_id
            # The extracted context becomes span attributes downstream: bounded too.
            with vp.continue_frame("downstream", ctx, tracer=tracer):
                pass
            with vp.batch_span([ctx, ctx, None], "batch", tracer=tracer):  # type: ignore[list-item]
                pass
        for span in exporter.get_finished_spans():
            for value in (span.attributes or {}).values():
                assert not isinstance(value, str) or len(value) <= limits.max_value_bytes
            stream = (span.attributes or {}).get("visiontel.frame.stream_id")
            assert stream is None or len(str(stream)) <= limits.max_stream_id
        stats["examples"] += 1
        assert not internal_errors.records, internal_errors.records[0].getMessage()

    extract_everywhere()
    record(
        "hostile-carriers",
        fault="random, near-valid and 8-70 KB values on extract_dict/http/grpc/mq/slot "
        "and the visiontel_frame propagator, then continue_frame and batch_span on the result",
        duration=f"{stats['examples']} hypothesis examples",
        measured=f"0 exceptions, 0 internal errors logged; {stats['contexts_with_frame']} "
        f"frames extracted, every stream id <= max_stream_id ({limits.max_stream_id}) and "
        f"every string attribute <= max_value_bytes ({limits.max_value_bytes})",
        lost="only the hostile values",
    )
    # Hypothesis stops early only when it runs out of distinct examples; these strategies
    # do not, so fewer than half means the search was cut short.
    assert stats["examples"] >= PROFILE.hypothesis_examples // 2, stats
    # Random carriers seldom hold a valid frame (a few per 150 examples); the two explicit
    # examples do, so the frame paths ran.
    assert stats["contexts_with_frame"] >= 2, stats


@EXAMPLES
@given(data=st.binary(min_size=0, max_size=600), offset=st.integers(-300, 600))
def test_shared_memory_slot_takes_any_bytes(internal_errors, data, offset):
    ctx = vp.extract_slot(bytearray(data), offset)
    assert isinstance(ctx, Context)
    assert not internal_errors.records


def test_oversized_values_are_ignored_whole(record, internal_errors):
    """The README's limits: an over-limit header value is dropped whole; baggage and
    tracestate keep at most their documented entry counts."""
    limits = vp.limits()
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    cases = {
        "value over max_value_bytes": {"traceparent": good + " " * limits.max_value_bytes},
        "stream id over max_stream_id": {
            "traceparent": good,
            "visiontel-frame": "c" * (limits.max_stream_id + 1) + ";1;1",
        },
        "181 baggage entries": {"baggage": ",".join(f"k{i}=v" for i in range(181))},
        "33 tracestate members": {
            "traceparent": good,
            "tracestate": ",".join(f"k{i}=v" for i in range(33)),
        },
    }
    before = sum(vp.rejected_counts().values())
    started = time.perf_counter()
    for name, carrier in cases.items():
        ctx = vp.extract_dict(carrier)
        from opentelemetry import baggage, trace

        span_context = trace.get_current_span(ctx).get_span_context()
        if name.startswith("value over"):
            assert not span_context.is_valid, name
        if name.startswith("stream id"):
            assert vp.get_frame(ctx) is None and span_context.is_valid, name
        if name.startswith("181"):
            assert len(baggage.get_all(ctx)) <= 180, name  # cut to the documented 180
        if name.startswith("33"):
            assert len(span_context.trace_state) <= 32, name
        # gRPC and message-queue carriers: same bounds on the same values.
        pairs = [(k, v) for k, v in carrier.items()]
        assert vp.get_frame(vp.extract_grpc(pairs)) is None
        assert vp.get_frame(vp.extract_mq([(k, v.encode()) for k, v in pairs])) is None
    rejected = sum(vp.rejected_counts().values()) - before
    # A too-long entries list is scanned only up to max_entries.
    long_list = [("x", "y")] * (limits.max_entries * 4) + [("traceparent", good)]
    from opentelemetry import trace

    assert not trace.get_current_span(vp.extract_grpc(long_list)).get_span_context().is_valid
    record(
        "hostile-oversized",
        fault="values over the documented limits on dict, gRPC and message-queue carriers",
        duration=f"{len(cases)} cases x 3 carriers, {time.perf_counter() - started:.3f} s",
        measured="over-limit values ignored whole, baggage cut to 180 entries, tracestate "
        f"<= 32 ({rejected} rejections counted); "
        f"list scan stops at {limits.max_entries} entries; no exception",
        lost="only the hostile values",
    )
    assert rejected >= len(cases)
    assert not internal_errors.records


# --- environment variables ------------------------------------------------------------------
ENV_TEXT = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["", " ", "-1", "0", "1e309", "nan", "inf", "-inf", "0x10", "true", "yes"]),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True).map(str),
)
# Every variable visiontel.torch reads, from its own constants.
TORCH_VARS = sorted(v for k, v in vars(torch_config_module).items() if k.startswith("ENV_"))
GPU_VARS = [
    "VISIONTEL_GPU_BACKEND",
    "VISIONTEL_GPU_NVML_LIBRARY",
    "VISIONTEL_GPU_INTERVAL",
    "VISIONTEL_GPU_PROCESSES",
    "VISIONTEL_GPU_EVENTS",
    "VISIONTEL_GPU_PROC_ROOT",
    "VISIONTEL_GPU_DCGM_ADDRESS",
    "VISIONTEL_GPU_SYSFS_ROOT",
]
PROPAGATION_VARS = [
    "VISIONTEL_PROPAGATION_MAX_VALUE_BYTES",
    "VISIONTEL_PROPAGATION_MAX_ENTRIES",
    "VISIONTEL_PROPAGATION_MAX_STREAM_ID",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
]
DEMO_VARS = [
    "VISIONTEL_DEMO_FRAMES",
    "VISIONTEL_DEMO_SIZE",
    "VISIONTEL_DEMO_FPS",
    "VISIONTEL_DEMO_CANARY_FRACTION",
    "VISIONTEL_DEMO_STACK",
    "VISIONTEL_DEMO_DETECTOR_PORT",
    "VISIONTEL_DEMO_THREADS",
    "VISIONTEL_DEMO_TELEMETRY",
]


def _env(names: list[str]) -> st.SearchStrategy[dict[str, str]]:
    safe = ENV_TEXT.filter(lambda v: "\0" not in v)
    return st.dictionaries(st.sampled_from(names), safe, max_size=len(names))


def _library_parsers_take(env: dict[str, str]) -> None:
    from visiontel.gpu._config import BACKENDS, GPUConfig
    from visiontel.propagation._diag import Limits
    from visiontel.torch._config import config_from_env

    torch_config = config_from_env(env)
    assert len(torch_config.include) <= 64 and len(torch_config.exclude) <= 64
    assert torch_config.model_name is None or 0 < len(torch_config.model_name) <= 128
    assert torch_config.max_layer_spans >= 0
    assert torch_config.layer_depth is None or torch_config.layer_depth >= 1
    with mock.patch.dict(os.environ, env, clear=False):
        gpu = GPUConfig.resolve()
        limits = Limits.from_env()
    assert gpu.backend in BACKENDS
    assert 0.05 <= gpu.interval < float("inf")
    assert 0 < torch_config.gpu_timeout_s < float("inf")
    assert limits.max_value_bytes >= 64 and min(limits.max_entries, limits.max_links) >= 1


def _demo_cli_takes(env: dict[str, str]) -> None:
    """`visiontel demo`'s variables follow visiontel's env policy: a bad one is logged and its
    default used, so the defaults always make a valid run configuration."""
    from visiontel.demo._config import add_arguments, from_arguments

    with mock.patch.dict(os.environ, env, clear=False):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        config = from_arguments(parser.parse_args([]))  # raises UsageError if not valid
    assert config.frames >= 0 and 0 <= config.fps < float("inf")
    assert 16 <= config.width <= 7680 and 16 <= config.height <= 4320
    assert 0 <= config.canary_fraction <= 1 and 0 <= config.detector_port <= 65535
    assert config.threads >= 0


LIBRARY_ENV = _env(TORCH_VARS + GPU_VARS + PROPAGATION_VARS)


@EXAMPLES
@given(env=LIBRARY_ENV)
def test_library_environment_parsers_never_raise(env):
    _library_parsers_take(env)


@pytest.mark.parametrize("raw", ["nan", "inf"])
def test_gpu_interval_rejects_non_finite_values(raw):
    from visiontel.gpu._config import GPUConfig

    with mock.patch.dict(os.environ, {"VISIONTEL_GPU_INTERVAL": raw}):
        assert 0.05 <= GPUConfig.resolve().interval < float("inf")


@EXAMPLES
@given(env=_env(DEMO_VARS))
def test_demo_environment_always_gives_a_valid_config(env):
    _demo_cli_takes(env)


def test_record_env_row(record):
    """The row runs its own pass of both properties above (they are cheap), so it holds
    whatever order the tests run in, and alone."""
    counts = {"library": 0, "demo": 0}

    @EXAMPLES
    @given(env=LIBRARY_ENV)
    def library(env):
        _library_parsers_take(env)
        counts["library"] += 1

    @EXAMPLES
    @given(env=_env(DEMO_VARS))
    def demo(env):
        _demo_cli_takes(env)
        counts["demo"] += 1

    library()
    demo()
    record(
        "hostile-environment",
        fault="random values in every VISIONTEL_TORCH_*, VISIONTEL_GPU_*, "
        "VISIONTEL_PROPAGATION_*, OTEL_SPAN_LINK_COUNT_LIMIT and VISIONTEL_DEMO_* variable",
        duration=f"{sum(counts.values())} hypothesis examples ({counts['library']} library, "
        f"{counts['demo']} demo CLI)",
        measured="libraries: no exception, defaults kept (<= 64 patterns, model name <= 128 "
        "chars, interval >= 0.05 s, limits >= their minimums); demo CLI: no exception, a "
        "valid run configuration from the defaults in effect",
        lost="nothing",
    )
    assert min(counts.values()) >= PROFILE.hypothesis_examples // 2, counts


def _run_with_env(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_gpu_serve_with_malformed_port_variable():
    out = _run_with_env(
        "from visiontel.gpu._serve import main; import sys; sys.argv=['visiontel-gpu','serve',"
        "'--help']; main()",
        VISIONTEL_GPU_PROMETHEUS_PORT="not-a-port",
    )
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


def test_demo_telemetry_with_malformed_metric_interval(tmp_path):
    out = _run_with_env(
        "import pathlib; from visiontel.demo._telemetry import setup; "
        f"setup('source', 'r1', pathlib.Path({str(tmp_path)!r}), enabled=True)",
        OTEL_METRIC_EXPORT_INTERVAL="every-two-seconds",
        OTEL_TRACES_EXPORTER="none",
    )
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]


# --- atheris (coverage-guided) ------------------------------------------------------------------
def test_atheris_fuzz_of_the_extract_paths(record, tmp_path):
    pytest.importorskip(
        "atheris", reason="atheris did not install here (pip install atheris needs a wheel)"
    )
    seconds = 8 if PROFILE.name == "short" else 60
    harness = ROOT / "tests" / "reliability" / "fuzz_extract.py"
    started = time.perf_counter()
    out = subprocess.run(
        # Crash/OOM reproducers go to tmp_path (libFuzzer writes them to the cwd by default)
        # and are shown below; corpus: tmp_path too.
        [
            sys.executable,
            str(harness),
            f"-max_total_time={seconds}",
            f"-artifact_prefix={tmp_path}/",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    runs = [line for line in out.stderr.splitlines() if "Done" in line and "runs" in line]
    record(
        "hostile-atheris",
        fault="coverage-guided fuzzing (atheris/libFuzzer) of extract_dict/http/grpc/mq/slot",
        duration=f"{time.perf_counter() - started:.0f} s",
        measured=(runs[-1].split("Done", 1)[1].strip() if runs else "no summary")
        + f"; exit code {out.returncode}",
        lost="nothing",
    )
    artifacts = {
        f.name: f.read_bytes()[:512].hex()
        for f in tmp_path.iterdir()
        if f.name.startswith(("crash-", "oom-", "leak-", "timeout-"))
    }
    assert out.returncode == 0, (artifacts, out.stderr[-3000:])
    assert runs, out.stderr[-2000:]
