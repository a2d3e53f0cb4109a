"""Helpers of the reliability suite (a uniquely named module: several conftest.py files
share one pytest session, so helpers cannot live in conftest)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shlex
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIG_DIR = ROOT / "collector-config"
COLLECTOR_HINT = "run `nox -s reliability` (or `nox -s reliability_short`), which builds it"

# Process start/stop, readiness and free ports are the local stack's (standard library only);
# the recipes' loopback addresses are set as the collector-config tests set them.
sys.path.insert(0, str(CONFIG_DIR / "stack"))
sys.path.insert(0, str(ROOT / "tests" / "collector"))
from collector_support import collector_env  # noqa: E402
from stack import Stack, free_port  # noqa: E402

__all__ = ["CONFIG_DIR", "ROOT", "Collectors", "Profile", "free_port"]


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    outage_s: float  # collector / gateway stopped this long
    window_s: float  # collector-up throughput windows before and after the outage
    load_s: float  # 8 inference threads + 64-frame batches
    slow_s: float  # time spent exporting to the slow collector
    hypothesis_examples: int


PROFILES = {
    # slow_s=32: four prompt/slow cycles of 4 + 4 s. Fewer let one neighbour's CPU burst on
    # the shared 2 cores move the slow/prompt ratio by 15 % on its own.
    "short": Profile(
        "short", outage_s=10, window_s=8, load_s=30, slow_s=32, hypothesis_examples=150
    ),
    "full": Profile(
        "full", outage_s=60, window_s=30, load_s=300, slow_s=48, hypothesis_examples=2000
    ),
}
_chosen = os.environ.get("VISIONTEL_RELIABILITY_PROFILE", "short").strip().lower()
if _chosen not in PROFILES:
    raise SystemExit(f"VISIONTEL_RELIABILITY_PROFILE must be short or full, got {_chosen!r}")
PROFILE = PROFILES[_chosen]


# --- results ------------------------------------------------------------------------------
# The identity of this pytest session's run: every row it records carries it, and the first
# line it writes to the results file is a header naming it, so render.py can tell this
# run's rows from a previous run's left in the same file. A nox session may set it (and
# hand the same value to render.py) through VISIONTEL_RELIABILITY_RUN.
RUN_ID = os.environ.get("VISIONTEL_RELIABILITY_RUN") or (
    f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
)
_header_written = False


def results_path() -> pathlib.Path:
    default = ROOT / ".nox" / f"reliability-{PROFILE.name}.jsonl"
    return pathlib.Path(os.environ.get("VISIONTEL_RELIABILITY_RESULTS", default))


def _append(line: dict[str, object]) -> None:
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(line) + "\n")


def start_run() -> None:
    """Write this run's header line (once per process; conftest calls it at session start,
    append_row before the first row if conftest was loaded too late to)."""
    global _header_written
    if not _header_written:
        _header_written = True
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        _append({"run": RUN_ID, "profile": PROFILE.name, "started": started})


def append_row(row_id: str, test_name: str, fields: dict[str, object]) -> None:
    """One JSON line per measured fault; render.py makes the table of docs/reliability.md."""
    start_run()
    session = "reliability" if PROFILE.name == "full" else "reliability_short"
    _append(
        {
            "id": row_id,
            "run": RUN_ID,
            "profile": PROFILE.name,
            "command": f"nox -s {session} -- -k {test_name}",
            **{k: str(v) for k, v in fields.items()},
        }
    )


# --- process measurements ----------------------------------------------------------------
def rss_mb() -> float:
    """Resident set size of this process, MB (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Stopwatch:
    """Longest gap between ticks of one thread: a stall of that thread shows up here."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.worst = 0.0
        self.lock = threading.Lock()

    def tick(self) -> None:
        now = time.perf_counter()
        with self.lock:
            self.worst = max(self.worst, now - self.last)
            self.last = now

    def reset(self) -> None:
        with self.lock:
            self.last, self.worst = time.perf_counter(), 0.0


class RssPeak:
    """Highest resident set size seen, sampled every 200 ms on a thread of its own."""

    def __init__(self) -> None:
        self.peak = rss_mb()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            self.peak = max(self.peak, rss_mb())

    def reset(self) -> float:
        self.peak = rss_mb()
        return self.peak

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


class SpanReader:
    """A file exporter's output, and a restarted collector's earlier files (`path.N`), read
    incrementally: each poll parses only the lines completed since the last one, and keeps
    only `key(span)` per span, counted. Reading back a long run this way neither re-reads
    nor holds its text (the full load profile writes ~1.4 M spans, several GB as Python
    objects: a test process that big makes every later child's peak RSS look that big)."""

    def __init__(self, path: pathlib.Path, key: Callable[[dict[str, Any]], Hashable]) -> None:
        self.path, self.key = path, key
        self.offsets: dict[int, int] = {}  # by inode: a restart renames the file
        self.seen: Counter[Hashable] = Counter()
        self.spans = 0

    def poll(self) -> int:
        """Read what was appended; the number of spans read so far."""
        for file in [self.path, *sorted(self.path.parent.glob(self.path.name + ".*"))]:
            try:
                handle = file.open("rb")
            except FileNotFoundError:
                continue
            with handle:
                inode = os.fstat(handle.fileno()).st_ino
                offset = self.offsets.get(inode, 0)
                handle.seek(offset)
                for line in handle:
                    if not line.endswith(b"\n"):
                        break  # being written: the next poll reads it whole
                    offset += len(line)
                    self._parse(line)
                self.offsets[inode] = offset
        return self.spans

    def _parse(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            request = json.loads(line)
        except json.JSONDecodeError:
            return
        for resource in request.get("resourceSpans", []):
            for scope in resource.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    self.spans += 1
                    self.seen[self.key(span)] += 1


def settle(
    path: pathlib.Path, key: Callable[[dict[str, Any]], Hashable], timeout: float = 30.0
) -> Counter[Hashable]:
    """key(span) -> count over the file exporter's spans, once their number has stopped
    changing for 2 s (or at `timeout`)."""
    reader = SpanReader(path, key)
    last, stable_since, deadline = -1, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = reader.poll()
        if count != last:
            last, stable_since = count, time.monotonic()
        elif time.monotonic() - stable_since > 2.0:
            break
        time.sleep(0.25)  # how often the file is read
    reader.poll()
    return reader.seen


# --- collectors -----------------------------------------------------------------------------
class Collectors:
    """otelcol-visiontel processes started by this test (by pid, through the stack module)."""

    def __init__(self, binary: pathlib.Path, workdir: pathlib.Path) -> None:
        os.environ["VISIONTEL_OTELCOL"] = str(binary)
        self.workdir = workdir
        self.stack = Stack(workdir)
        self.envs: dict[str, dict[str, str]] = {}
        self.configs: dict[str, list[pathlib.Path]] = {}
        self.incarnation: dict[str, int] = {}

    def start(self, name: str, configs: list[pathlib.Path], env: dict[str, str]) -> None:
        self.envs[name], self.configs[name] = env, configs
        self.stack.start_otelcol(name, configs, env)

    def stop(self, name: str) -> None:
        self.stack.stop_one(name)

    def restart(self, name: str) -> None:
        # The file exporter truncates its file when it starts: keep what the previous
        # run wrote beside it (read_spans reads both).
        out = self.workdir / f"{name}-out.jsonl"
        if out.exists():
            self.incarnation[name] = self.incarnation.get(name, 0) + 1
            out.rename(out.with_name(f"{name}-out.jsonl.{self.incarnation[name]}"))
        self.stack.start_otelcol(name, self.configs[name], self.envs[name])

    def log(self, name: str) -> str:
        return self.stack.log(name)

    def stop_all(self) -> None:
        self.stack.stop()


def base_env(**extra: str) -> dict[str, str]:
    """Loopback ports for the addresses every recipe reads from the environment."""
    return collector_env(VISIONTEL_PROMETHEUS_EXPORTER_ENDPOINT=f"127.0.0.1:{free_port()}", **extra)


def gateway_env(tls: dict[str, pathlib.Path], token: str, grpc_port: int) -> dict[str, str]:
    """gateway.yaml's required settings: TLS files, the agents' token, dead-end backends."""
    return base_env(
        VISIONTEL_GATEWAY_GRPC_ENDPOINT=f"127.0.0.1:{grpc_port}",
        VISIONTEL_GATEWAY_TOKEN=token,
        VISIONTEL_GATEWAY_CERT_FILE=str(tls["cert"]),
        VISIONTEL_GATEWAY_KEY_FILE=str(tls["key"]),
        VISIONTEL_TAILSAMPLING_DNS="127.0.0.1",
        VISIONTEL_TAILSAMPLING_PORT=str(free_port()),
        VISIONTEL_TAILSAMPLING_CA_FILE=str(tls["ca"]),
        VISIONTEL_PROMETHEUS_REMOTE_WRITE_URL=f"http://127.0.0.1:{free_port()}/api/v1/write",
        VISIONTEL_PROMETHEUS_TOKEN="unused",
    )


def file_override(
    workdir: pathlib.Path, name: str, pipelines: Iterable[str], keep: Iterable[str] = ()
) -> pathlib.Path:
    """A config layered over a recipe: the given pipelines export to a JSON-lines file
    (plus the exporters named in `keep`, e.g. a connector the recipe needs)."""
    out = workdir / f"{name}-out.jsonl"
    exporters = {"file/out": {"path": str(out), "flush_interval": "100ms"}}
    override = workdir / f"{name}-override.yaml"
    override.write_text(
        json.dumps(
            {
                "exporters": exporters,
                "service": {
                    "pipelines": {p: {"exporters": [*keep, "file/out"]} for p in pipelines}
                },
            }
        )
    )
    return override


def read_spans(path: pathlib.Path) -> list[dict[str, Any]]:
    """Every span in a file exporter's output (OTLP JSON, one request per line), the
    outputs of earlier runs of a restarted collector (`path.N`) included."""
    spans: list[dict[str, Any]] = []
    files = [path, *path.parent.glob(path.name + ".*")]
    text = "\n".join(f.read_text() for f in files if f.exists())
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        for resource in request.get("resourceSpans", []):
            for scope in resource.get("scopeSpans", []):
                spans.extend(scope.get("spans", []))
    return spans


def attribute(span: dict[str, Any], key: str) -> Any:
    for item in span.get("attributes", []):
        if item["key"] == key:
            value = item["value"]
            return next(iter(value.values())) if value else None
    return None


def quote(args: Iterable[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


Points = dict[str, list[tuple[dict[str, Any], Any]]]


def metric_points(reader: Any) -> Points:
    """Metric name -> [(attributes, value)] of an InMemoryMetricReader's latest collection."""
    out: Points = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = [
                    (dict(p.attributes or {}), getattr(p, "value", None))
                    for p in metric.data.data_points
                ]
    return out
