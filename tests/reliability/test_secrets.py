"""Secrets: camera-URL credentials never become attributes or log lines, OTLP headers (API
keys) never appear in logs, spans or error messages, and the recipes' TLS + bearer-token path
refuses a wrong token and accepts the right one on the real collector."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from reliability_support import (
    CONFIG_DIR,
    HERE,
    PROFILE,
    attribute,
    base_env,
    file_override,
    free_port,
    gateway_env,
    read_spans,
)
from secrets_support import otlp_receiver, self_signed_tls

import visiontel.propagation as vp
from visiontel.demo._frames import describe, redact_url
from visiontel.gpu.testing import NvmlSimulator

SECRET = "s3cr3t-" + os.urandom(6).hex()
# "PW" and "U" never occur in the lowercase hosts and paths below, so finding it means a leak.
USERINFO = st.tuples(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", max_size=12).map(lambda s: "U" + s),
    st.text(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!$&'()*+,;=-", max_size=24
    ).map(lambda s: "PW" + s),
)
URL_PARTS = {
    "scheme": st.sampled_from(["rtsp", "rtsps", "http", "https", "rtmp", "RTSP"]),
    "userinfo": USERINFO,
    "host": st.sampled_from(["cam1", "10.0.0.7", "[fe80::1]", "camera.local"]),
    "port": st.one_of(st.none(), st.integers(1, 65535)),
    "path": st.text("abcdefghijklmnopqrstuvwxyz0123456789/_-", max_size=20),
}
URL_EXAMPLES = settings(max_examples=PROFILE.hypothesis_examples, deadline=None)


def _source_names_carry_no_credentials(scheme, userinfo, host, port, path) -> None:
    user, password = userinfo
    netloc = f"{user}:{password}@{host}" + (f":{port}" if port else "")
    url = f"{scheme}://{netloc}/{path}?token={password}"
    for shown in (redact_url(url), describe(url)[1]):
        assert password not in shown and f"{user}:" not in shown, shown


@URL_EXAMPLES
@given(**URL_PARTS)
def test_demo_source_names_carry_no_credentials(scheme, userinfo, host, port, path):
    """The demo's source name (`visiontel.source.name`, log lines, errors) is the URL
    without user:password."""
    _source_names_carry_no_credentials(scheme, userinfo, host, port, path)


def _url_pass() -> int:
    """A pass of the property above run by the row's own test (which must not depend on
    another test having run): how many URLs it checked."""
    checked = [0]

    @URL_EXAMPLES
    @given(**URL_PARTS)
    def run(scheme, userinfo, host, port, path):
        _source_names_carry_no_credentials(scheme, userinfo, host, port, path)
        checked[0] += 1

    run()
    return checked[0]


def _demo(*args: str, env: dict[str, str], cwd: pathlib.Path, timeout: float = 240):
    script = pathlib.Path(sys.executable).parent / "visiontel"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "visiontel.cli"]
    return subprocess.run(
        [*command, "demo", *args],
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_camera_url_credentials_in_the_demo(record, tmp_path):
    urls = _url_pass()
    # An unreachable camera: the error message names the camera, without its password.
    closed = free_port()
    url = f"rtsp://admin:{SECRET}@127.0.0.1:{closed}/stream1"
    out = _demo("--source", url, "--frames", "2", env={}, cwd=tmp_path, timeout=120)
    leaked = SECRET in out.stdout + out.stderr
    record(
        "secret-camera-url",
        fault="camera URLs with user:password (random, hypothesis) through the demo's source "
        "naming, and `visiontel demo --source rtsp://admin:<secret>@...` on an unreachable camera",
        duration=f"{urls} URLs + 1 demo run",
        measured=f"password in names: 0/{urls}; demo exit code {out.returncode}, "
        f"secret in its output: {'yes' if leaked else 'no'}",
        lost="nothing",
    )
    assert urls >= PROFILE.hypothesis_examples // 2, urls
    assert out.returncode != 0 and "127.0.0.1" in out.stderr + out.stdout
    assert not leaked, (out.stdout + out.stderr)[-2000:]


def test_stream_id_with_camera_credentials_is_not_an_attribute(record):
    """A camera URL used as the frame's stream id is accepted and travels without its
    userinfo (visiontel-propagation's README: `rtsp://user:pass@cam/1` -> `rtsp://cam/1`,
    on both sides of every hop): no password in attributes or headers."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("secrets")
    carrier: dict[str, str] = {}
    # A printable id of 40-odd characters is a valid stream id: refusing it (ValueError)
    # would be a bug, and pytest reports it as one.
    frame = vp.FrameIdentity.now(f"rtsp://admin:{SECRET}@cam1/stream", 1)
    with vp.start_frame("capture", frame, tracer=tracer):
        vp.inject_dict(carrier)
    received = vp.get_frame(vp.extract_dict(carrier))
    with vp.continue_frame("detect", vp.extract_dict(carrier), tracer=tracer):
        pass
    spans = exporter.get_finished_spans()
    texts = [str(v) for s in spans for v in (s.attributes or {}).values()]
    leaked = [t for t in texts + list(carrier.values()) if SECRET in t]
    streams = {str((s.attributes or {}).get("visiontel.frame.stream_id")) for s in spans}
    record(
        "secret-stream-id",
        fault="FrameIdentity stream id rtsp://admin:<secret>@cam1/stream through start_frame, "
        "inject_dict, extract_dict, continue_frame",
        duration=f"1 frame, {len(spans)} spans",
        measured=f"attributes/header values holding the secret: {len(leaked)}; "
        f"stream ids seen: {sorted(streams)}",
        lost="only the userinfo",
    )
    assert not leaked, leaked
    assert len(spans) == 2 and streams == {"rtsp://cam1/stream"}, streams
    assert received is not None and received.stream_id == "rtsp://cam1/stream", received
    assert received.sequence == 1


# --- OTLP headers ---------------------------------------------------------------------------
def _gpu_serve() -> list[str]:
    """The `visiontel-gpu` console script of this environment (the package has no
    __main__: `python -m visiontel.gpu` only prints an error)."""
    script = pathlib.Path(sys.executable).parent / "visiontel-gpu"
    if script.exists():
        return [str(script)]
    code = "import sys; from visiontel.gpu._serve import main; sys.exit(main())"
    return [sys.executable, "-c", code]


def _wait_for_text(
    path: pathlib.Path, needles: tuple[str, ...], proc: subprocess.Popen[str], timeout: float
) -> bool:
    """Whether one of `needles` appears in `path` (written by `proc`) within `timeout`;
    False as soon as `proc` has exited without writing it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = proc.poll() is not None
        if any(n in path.read_text(errors="replace") for n in needles):
            return True
        if exited:
            return False
        time.sleep(0.1)  # how often the file is read, not how long to wait
    return False


def _leak_report(outputs: dict[str, str]) -> list[str]:
    return [name for name, text in outputs.items() if SECRET in text]


def test_otlp_api_key_never_in_logs_spans_or_errors(record, tmp_path):
    """Real processes, a real exporter refused with 401: the key reaches the receiver
    (proving it was used) and appears nowhere in what the processes print or write."""
    sim = NvmlSimulator.build(tmp_path / "nvml")
    sim.write({"device_count": 1, **NvmlSimulator.gpu(0)})
    outputs: dict[str, str] = {}
    with otlp_receiver(status=401) as receiver:
        env = {
            **os.environ,
            **sim.env(),
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_HEADERS": f"api-key={SECRET},authorization=Bearer%20{SECRET}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "PYTHONUNBUFFERED": "1",
        }
        app = subprocess.run(
            [sys.executable, str(HERE / "leaky_app.py"), "20"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        outputs["instrumented app stdout (console spans)"] = app.stdout
        outputs["instrumented app stderr (DEBUG logs, export errors)"] = app.stderr
        # `visiontel-gpu serve` until it has logged a refused export (the key sent, the
        # error path taken), then SIGTERM.
        daemon_log = tmp_path / "gpu-serve.log"
        with daemon_log.open("w") as log:
            daemon = subprocess.Popen(
                [*_gpu_serve(), "serve", "--interval", "0.1"],
                env={**env, "VISIONTEL_GPU_LOG_LEVEL": "DEBUG"},
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                refused = _wait_for_text(daemon_log, ("401", "Unauthorized"), daemon, 60)
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=60)
        outputs["visiontel-gpu serve output"] = daemon_log.read_text(errors="replace")
        demo = _demo(
            "--frames",
            "10",
            "--fps",
            "0",
            "--otlp-endpoint",
            receiver.endpoint,
            env={k: v for k, v in env.items() if k != "OTEL_EXPORTER_OTLP_ENDPOINT"},
            cwd=tmp_path,
        )
        outputs["visiontel demo output"] = demo.stdout + demo.stderr
        for path in tmp_path.rglob("*"):
            if path.is_file() and path.suffix in (".json", ".jsonl", ".log", ".txt"):
                outputs[f"file {path.name}"] = path.read_text(errors="replace")
    keyed = sum(1 for h in receiver.headers if h.get("api-key") == SECRET)
    leaks = _leak_report(outputs)
    record(
        "secret-otlp-headers",
        fault="OTEL_EXPORTER_OTLP_HEADERS=api-key=<secret> and a receiver answering 401 to "
        "every export: an instrumented app (torch + propagation + gpu, DEBUG logging, console "
        "spans), `visiontel-gpu serve`, `visiontel demo`",
        duration=f"{receiver.requests} refused exports",
        measured=f"requests carrying the key: {keyed}; outputs searched: {len(outputs)} "
        f"({sum(len(t) for t in outputs.values()) // 1024} KB); outputs holding the key: "
        f"{len(leaks)}",
        lost="the refused telemetry (by design of the test)",
    )
    assert app.returncode == 0, app.stderr[-3000:]
    assert "leaky app done" in app.stderr
    assert keyed >= 3, f"the key never reached the receiver ({receiver.requests} requests)"
    assert "401" in app.stderr or "Unauthorized" in app.stderr, "no export error was logged"
    assert refused, (
        "visiontel-gpu serve logged no refused export within 60 s:\n"
        + outputs["visiontel-gpu serve output"][-2000:]
    )
    assert not leaks, f"the API key appeared in: {leaks}"


# --- TLS + bearer token on the real collector --------------------------------------------------
def _named(spans: list[dict[str, object]], name: str) -> int:
    return sum(1 for s in spans if s.get("name") == name)


def _export(endpoint: str, ca: pathlib.Path, token: str, spans: int, name: str) -> object:
    """Send `spans` spans with the SDK's OTLP/gRPC exporter over TLS; the export result."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tls")
    for i in range(spans):
        with tracer.start_as_current_span(name, attributes={"visiontel.frame.sequence": i}):
            pass
    from grpc import ssl_channel_credentials

    exporter = OTLPSpanExporter(
        endpoint=endpoint,
        credentials=ssl_channel_credentials(ca.read_bytes()),
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )
    try:
        return exporter.export(memory.get_finished_spans())
    finally:
        exporter.shutdown()


def test_gateway_tls_and_bearer_token(collectors, record, tmp_path):
    from opentelemetry.sdk.trace.export import SpanExportResult

    tls = self_signed_tls(tmp_path)
    token = "token-" + os.urandom(12).hex()
    grpc_port = free_port()
    env = gateway_env(tls, token, grpc_port)
    override = file_override(tmp_path, "gateway", ["traces"], keep=["span_metrics"])
    collectors.start("gateway", [CONFIG_DIR / "gateway.yaml", override], env)
    endpoint = f"localhost:{grpc_port}"
    out = tmp_path / "gateway-out.jsonl"
    wrong = _export(endpoint, tls["ca"], "wrong-" + token, 5, name="wrong-token")
    right = _export(endpoint, tls["ca"], token, 7, name="right-token")
    # The right token's spans go through the same pipeline after the wrong ones: once
    # they are all stored, a wrong-token span that had been accepted would be there too.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _named(read_spans(out), "right-token") < 7:
        time.sleep(0.3)  # how often the file is read, not how long to wait
    stored = read_spans(out)
    after_wrong = _named(stored, "wrong-token")
    arrived = [s for s in stored if s.get("name") == "right-token"]
    gateway_log = collectors.log("gateway")
    record(
        "secret-tls-auth",
        fault="gateway.yaml (TLS, bearertokenauth) on otelcol-visiontel with a self-signed CA "
        "made by `cryptography`; SDK OTLP/gRPC exporter with a wrong, then the right token",
        duration="5 + 7 spans",
        measured=f"wrong token: {wrong.name}, {after_wrong} spans stored; right token: "
        f"{right.name}, {len(arrived)} spans stored; token in the gateway log: "
        f"{'yes' if token in gateway_log else 'no'}",
        lost="the 5 spans sent with the wrong token (refused, as intended)",
    )
    assert wrong == SpanExportResult.FAILURE and after_wrong == 0
    assert right == SpanExportResult.SUCCESS and len(arrived) == len(stored) == 7, len(stored)
    assert {attribute(s, "visiontel.frame.sequence") for s in arrived} == {str(i) for i in range(7)}
    assert token not in gateway_log


def test_collector_strips_camera_credentials(collectors, record, tmp_path):
    """local.yaml's transform/redaction processors: a credentialed camera URL sent as an
    attribute is stored without its userinfo."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    env = base_env()
    override = file_override(tmp_path, "local", ["traces"])
    collectors.start("local", [CONFIG_DIR / "local.yaml", override], env)
    provider = TracerProvider()
    exporter = OTLPSpanExporter(endpoint=f"http://{env['VISIONTEL_OTLP_HTTP_ENDPOINT']}/v1/traces")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    url = f"rtsp://admin:{SECRET}@10.0.0.7:554/stream1"
    with provider.get_tracer("secrets").start_as_current_span(
        "capture", attributes={"visiontel.source.name": url, "url.full": url}
    ):
        pass
    provider.shutdown()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not read_spans(tmp_path / "local-out.jsonl"):
        time.sleep(0.3)
    stored = (
        (tmp_path / "local-out.jsonl").read_text()
        if read_spans(tmp_path / "local-out.jsonl")
        else ""
    )
    record(
        "secret-collector-strip",
        fault="span attributes holding rtsp://admin:<secret>@host/... sent to local.yaml",
        duration="1 span",
        measured=f"stored: {'yes' if stored else 'no'}; secret in storage: "
        f"{'yes' if SECRET in stored else 'no'}; host and path kept: "
        f"{'yes' if 'rtsp://10.0.0.7:554/stream1' in stored else 'no'}",
        lost="only the userinfo",
    )
    assert stored and SECRET not in stored and "rtsp://10.0.0.7:554/stream1" in stored
