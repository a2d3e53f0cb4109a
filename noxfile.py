"""Developer and CI sessions for the visiontel workspace.

Every session uses uv as the virtualenv backend, so wheels (torch above all, several GB
with its CUDA libraries) come from uv's shared cache instead of being downloaded again.

    nox -t ci            # what .ci/run runs: lint, build, tests on the oldest and newest torch,
                         # OpenTelemetry from its floor up, the collector, the stack,
                         # short reliability
    nox -s tests         # the whole torch matrix
    nox -s ultralytics   # visiontel-ultralytics on the oldest and newest Ultralytics
    nox -s bench         # overhead benchmarks, figures for docs/benchmarks.md
"""

from __future__ import annotations

import os
import pathlib
import sys
import uuid

import nox

ROOT = pathlib.Path(__file__).parent
PACKAGES = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
SOURCE_DIRS = [str(p / "src") for p in PACKAGES]

# Oldest supported, a middle release, newest on PyPI. CI runs the two ends.
TORCH_OLDEST = "2.4.1"
TORCH_MIDDLE = "2.9.1"
TORCH_NEWEST = "2.15.0"
# The torchvision built for each torch: pinned with it, so that installing a test extra
# (torchvision, ultralytics) cannot swap the session's torch for the newest one.
TORCHVISION_FOR = {TORCH_OLDEST: "0.19.1", TORCH_MIDDLE: "0.24.1", TORCH_NEWEST: "0.29.2"}

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


# Every session runs pytest under the root conftest.py's strict-skip rule: a skip fails the
# run unless it names ("needs <resource>: ...") a resource listed here, which CI machines
# may really lack. Only the GPU is: the CUDA tests skip on the CPU-only CI machine.
STRICT_SKIPS = {"VISIONTEL_STRICT_SKIPS": "1", "VISIONTEL_MAY_LACK": "cuda"}

# visiontel-torch's C extension (csrc/) is optional for users (no compiler: pure Python)
# but built here: its tests fail rather than skip when it is missing. The floor's middle
# releases run with the pure-Python loops instead, so both stay tested on several SDKs.
COMPILED = {"VISIONTEL_REQUIRE_SPEEDUPS": "1"}
PURE_PYTHON = {"VISIONTEL_TORCH_PURE_PYTHON": "true"}

# visiontel-spool's SIGKILL test (25 children killed at random moments, ~25 s) proves the
# spool's file format, which no OpenTelemetry release changes: `isolated` runs it in full,
# `floor`, which runs spool's tests again on older releases, kills 5 times.
SPOOL_FEW_KILLS = {"VISIONTEL_SPOOL_KILLS": "5"}


def _torch_pins(session: nox.Session, torch_version: str) -> list[str]:
    """``-c FILE`` arguments holding torch and its torchvision at the session's versions."""
    constraints = pathlib.Path(session.create_tmp()) / f"torch-{torch_version}.txt"
    torchvision = TORCHVISION_FOR[torch_version]
    constraints.write_text(f"torch=={torch_version}\ntorchvision=={torchvision}\n")
    return ["-c", str(constraints)]


def _editable(*names: str) -> list[str]:
    """``-e`` arguments installing these distributions (with their test extra) and
    visiontel-support, which every distribution depends on and PyPI does not hold."""
    return [f"-e{ROOT / 'packages' / n}[test]" for n in ("visiontel-support", *names)]


def _install_workspace(session: nox.Session, torch_version: str, *extra: str) -> None:
    """Install every distribution of the workspace (editable, with its test extra)."""
    pins = _torch_pins(session, torch_version)
    session.install(f"torch=={torch_version}", "numpy", *pins)
    args: list[str] = []
    for package in PACKAGES:
        args += ["-e", f"{package}[test]"]
    session.install(*args, *extra, *pins)


@nox.session(python=PYTHON, tags=["ci"])
def lint(session: nox.Session) -> None:
    """ruff on everything, mypy --strict on every distribution's src/."""
    _install_workspace(
        session,
        TORCH_NEWEST,
        "ruff>=0.6",
        "mypy>=1.11",
        "types-PyYAML",
        "types-protobuf",
        "opentelemetry-exporter-otlp",
    )
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    env = {"MYPYPATH": os.pathsep.join(SOURCE_DIRS)}
    session.run("mypy", *SOURCE_DIRS, env=env)


@nox.session(python=PYTHON)
@nox.parametrize(
    "torch",
    [
        nox.param(TORCH_OLDEST, tags=["ci"]),
        nox.param(TORCH_MIDDLE),
        nox.param(TORCH_NEWEST, tags=["ci"]),
    ],
)
def tests(session: nox.Session, torch: str) -> None:
    """Unit, integration and subprocess tests of every distribution on one torch release.

    In a shuffled order (pytest-randomly; the seed is printed, `-- -p randomly
    --randomly-seed=N` replays it, `-- -p no:randomly` turns it off).
    """
    _install_workspace(session, torch, "pytest-randomly")
    targets = _unit_test_dirs()
    # tests/collector needs the built collector and promtool: the `collector` session runs it.
    # tests/reliability has its own sessions (reliability, reliability_short). Tests marked
    # e2e need the local stack: the `stack` session runs them.
    ignore = [f"--ignore={ROOT / 'tests' / d}" for d in ("collector", "reliability")]
    if torch != TORCH_NEWEST:
        # What does not depend on torch runs in full on the newest only (a CI budget):
        # - tests/demo starts the demo's processes ~60 times (half of a session's time); its
        #   flags, ports, bad input and canary do not depend on torch, so on older releases
        #   only the three-process pipeline runs;
        # - the distributions that never import torch (their tests also run in `isolated`,
        #   `gpu` and `floor`).
        demo = ROOT / "tests" / "demo"
        others = [t for t in sorted(demo.glob("test_*.py")) if t.name != DEMO_ON_ALL]
        ignore += [f"--ignore={t}" for t in others]
        targets = [t for t in targets if pathlib.Path(t).parent.name not in TORCH_FREE]
    # visiontel-support's and -spool's tests run in `isolated` on the same (newest) releases
    # of everything they import, and spool's in `floor` beside torch and propagation.
    targets = [t for t in targets if pathlib.Path(t).parent.name not in ISOLATED_ONLY]
    env = {"VISIONTEL_TEST_TORCH": torch, **STRICT_SKIPS, **COMPILED}
    session.run("pytest", *targets, *ignore, "-m", "not e2e", *session.posargs, env=env)


# The one demo test file every torch release of the matrix runs (see `tests`).
DEMO_ON_ALL = "test_demo_pipeline.py"
# Distributions that never import torch: `tests` runs them on the newest torch only.
TORCH_FREE = ("visiontel-support", "visiontel-gpu", "visiontel-spool")
# Distributions whose tests `tests` leaves to `isolated` (a CI budget): they import neither
# torch nor a neighbour, and `isolated` installs the same newest releases of what they do.
ISOLATED_ONLY = ("visiontel-support", "visiontel-spool")


def _unit_test_dirs() -> list[str]:
    """Every distribution's tests and tests/, but visiontel-ultralytics' own: the
    `ultralytics` session runs those, on the oldest and newest Ultralytics."""
    skip = {"visiontel-ultralytics"}
    targets = [str(p / "tests") for p in PACKAGES if (p / "tests").exists() and p.name not in skip]
    targets.append(str(ROOT / "tests"))
    return targets


# visiontel-gpu declares nvidia-ml-py>=12.535: its oldest release here, the newest in `tests`.
# The NVML paths touch nvidia-ml-py's private names behind one gate (_nvml_private.py);
# this session proves the gate and the layouts on the floor release.
NVML_PY_OLDEST = "12.535.77"


@nox.session(python=PYTHON, tags=["ci"])
def gpu(session: nox.Session) -> None:
    """visiontel-gpu's tests on the oldest nvidia-ml-py it declares (no torch needed)."""
    session.install(*_editable("visiontel-gpu"), f"nvidia-ml-py=={NVML_PY_OLDEST}")
    session.run(
        "python",
        "-c",
        "import pynvml, importlib.metadata as m; print('nvidia-ml-py', m.version('nvidia-ml-py'))",
    )
    tests = str(ROOT / "packages" / "visiontel-gpu" / "tests")
    session.run("pytest", tests, *session.posargs, env=dict(STRICT_SKIPS))


# Oldest supported Ultralytics with the oldest torch, newest with the newest.
ULTRALYTICS_MATRIX = {"8.3.0": TORCH_OLDEST, "8.4.190": TORCH_NEWEST}


@nox.session(python=PYTHON)
@nox.parametrize("ultralytics", [nox.param(v, tags=["ci"]) for v in ULTRALYTICS_MATRIX])
def ultralytics(session: nox.Session, ultralytics: str) -> None:
    """visiontel-ultralytics' tests on one Ultralytics release (models from its bundled yaml,
    ONNX through onnxruntime, `yolo predict` under opentelemetry-instrument)."""
    torch_version = ULTRALYTICS_MATRIX[ultralytics]
    pins = _torch_pins(session, torch_version)
    pin = pathlib.Path(session.create_tmp()) / "ultralytics.txt"
    pin.write_text(f"ultralytics=={ultralytics}\n")
    session.install(f"torch=={torch_version}", "numpy", *pins)
    names = ("visiontel-torch", "visiontel-propagation", "visiontel-ultralytics")
    session.install(*_editable(*names), *pins, "-c", str(pin))
    session.run("python", "-c", "import ultralytics; print('ultralytics', ultralytics.__version__)")
    env = {"VISIONTEL_TEST_TORCH": torch_version, "YOLO_OFFLINE": "1", **STRICT_SKIPS}
    tests = str(ROOT / "packages" / "visiontel-ultralytics" / "tests")
    session.run("pytest", tests, *session.posargs, env=env)


@nox.session(python=PYTHON)
def alone(session: nox.Session) -> None:
    """Each test of the `tests` session in a pytest process of its own (no test leans on
    another; ~30 min on 2 cores). `-- --by-file` runs each file alone instead."""
    _install_workspace(session, TORCH_NEWEST)
    targets = _unit_test_dirs()
    ignore = [f"--ignore={ROOT / 'tests' / d}" for d in ("collector", "reliability")]
    env = {"VISIONTEL_TEST_TORCH": TORCH_NEWEST, **STRICT_SKIPS}
    runner = str(ROOT / "tests" / "run_each_alone.py")
    selection = [*targets, *ignore, "-m", "not e2e"]
    session.run("python", runner, *session.posargs, "--", *selection, env=env)


# Distributions whose tests need no torch, each tested in a venv holding only itself (and
# visiontel-support): a dependency it forgot to declare, hidden in the shared venv of
# `tests` by a neighbour that declares it, fails here. visiontel-gpu has its own such session
# (`gpu`), visiontel-ultralytics too (`ultralytics`: with torch and propagation, its deps).
ISOLATED = ("visiontel-support", "visiontel-propagation", "visiontel-spool")


@nox.session(python=PYTHON, tags=["ci"])
@nox.parametrize("package", ISOLATED)
def isolated(session: nox.Session, package: str) -> None:
    """One distribution's tests in a venv of its own, with only what it declares."""
    session.install(*_editable(package))
    tests = str(ROOT / "packages" / package / "tests")
    session.run("pytest", tests, "-p", "no:cacheprovider", *session.posargs, env=dict(STRICT_SKIPS))


# The OpenTelemetry releases visiontel-torch and visiontel-propagation are tested on below
# the newest (which the `tests` session installs): their declared floor and two between.
# visiontel-torch's fast paths switch themselves off past the newest tested release
# (TESTED_SDK in its _otel_private.py): move both together.
OTEL_RELEASES = {"1.30.0": "0.51b0", "1.35.0": "0.56b0", "1.40.0": "0.61b0"}


@nox.session(python=PYTHON, tags=["ci"])
@nox.parametrize("otel", list(OTEL_RELEASES))
def floor(session: nox.Session, otel: str) -> None:
    """visiontel-torch, -propagation and -spool on older OpenTelemetry, down to the floor."""
    pins = _torch_pins(session, TORCH_OLDEST)
    session.install(f"torch=={TORCH_OLDEST}", "numpy", "setuptools<70", *pins)  # 0.51b0
    names = ("visiontel-torch", "visiontel-propagation", "visiontel-spool")
    contrib = OTEL_RELEASES[otel]
    session.install(
        *_editable(*names),
        f"opentelemetry-api=={otel}",
        f"opentelemetry-sdk=={otel}",
        # visiontel-spool wraps these exporters and reaches into them behind its gate.
        f"opentelemetry-exporter-otlp-proto-http=={otel}",
        f"opentelemetry-exporter-otlp-proto-grpc=={otel}",
        f"opentelemetry-instrumentation=={contrib}",
        f"opentelemetry-distro=={contrib}",
        *pins,
    )
    session.run(
        "python", "-c", "import opentelemetry.sdk.version as v; print('sdk', v.__version__)"
    )
    targets = [str(ROOT / "packages" / n / "tests") for n in names]
    env = {"VISIONTEL_TEST_TORCH": TORCH_OLDEST, **STRICT_SKIPS, **COMPILED, **SPOOL_FEW_KILLS}
    if otel != min(OTEL_RELEASES):  # between floor and newest: what touches the SDK's pieces
        torch_tests = ROOT / "packages" / "visiontel-torch" / "tests"
        targets[0:1] = [str(torch_tests / f"test_{name}.py") for name in OTEL_SENSITIVE]
        env.update(PURE_PYTHON)
    session.run("pytest", *targets, *session.posargs, env=env)


# visiontel-torch tests of the span and metric paths, run on the releases between floor and
# newest (the floor and the newest run everything).
OTEL_SENSITIVE = (
    "otel_gate",
    "livespan",
    "children",
    "spans",
    "metrics",
    "metric_fold",
    "stage",
    "volume",
    "speedups",
    "dropped_roots",
    "sampled_roots",
)


@nox.session(python=PYTHON, tags=["ci"])
def build(session: nox.Session) -> None:
    """Build every wheel, install them into a fresh venv, import them, load their entry points."""
    dist = ROOT / "dist"
    session.run("rm", "-rf", str(dist), external=True)
    session.run("uv", "build", "--all-packages", "--wheel", "--out-dir", str(dist), external=True)
    wheels = sorted(str(w) for w in dist.glob("*.whl"))
    if not wheels:
        session.error("uv build produced no wheel")
    check_venv = pathlib.Path(session.create_tmp()) / "wheel-check"
    session.run("uv", "venv", "--python", PYTHON, "--clear", str(check_venv), external=True)
    python = str(check_venv / "bin" / "python")
    session.run(
        "uv", "pip", "install", "--python", python, *wheels, "opentelemetry-sdk", external=True
    )
    session.run(python, str(ROOT / "tests" / "check_wheels.py"), *wheels, external=True)


# Scripts run a second time with torchvision's SSDlite320, a realistic CPU detector.
_SSDLITE_ARGS = {
    "pipeline": ("--frames", "200", "--rounds", "6"),
    "detector_loop": (),
    "cpu_share": ("--seconds", "30"),
}


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Overhead benchmarks (ratios against a baseline measured in the same run)."""
    _install_workspace(session, TORCH_NEWEST, "py-spy")  # py-spy: bench/cpu_share.py
    scripts = sorted((ROOT / "bench").glob("*.py"))
    only = set(session.posargs)
    for script in scripts:
        if script.name.startswith("_") or (only and script.stem not in only):
            continue
        session.run("python", str(script))
        if script.stem in _SSDLITE_ARGS:
            session.run("python", str(script), "--model", "ssdlite", *_SSDLITE_ARGS[script.stem])


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job: `visiontel demo` on embedded defaults (flags after `--`: `-- --frames 100`)."""
    _install_workspace(
        session, TORCH_NEWEST, "-e", f"{ROOT / 'packages' / 'visiontel'}[demo,torchvision]"
    )
    env = {}
    if "--stack" in session.posargs:  # the local stack's binaries, built once and cached
        for tool in ("otelcol", "jaeger", "prometheus", "zipkin", "victorialogs"):
            env[f"VISIONTEL_{tool.upper()}"] = _collector_tool(session, tool)
    session.run("visiontel", "demo", *session.posargs, env=env)


# --- collector-config/ (issue 5): otelcol-visiontel, recipes, Prometheus rules, Grafana ----------
# The binaries are built or fetched by collector-config/toolchain.py and cached under
# ~/.cache/visiontel/ (the collector keyed by a hash of its builder manifest), so only the
# first run on a machine pays for the build.
COLLECTOR_TOOLCHAIN = ROOT / "collector-config" / "toolchain.py"
COLLECTOR_TEST_DEPS = (
    "pytest>=8",
    "pyyaml",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp",
    "jsonschema",
    "grafana-foundation-sdk==1769699379!11.6.0",
)


def _collector_tool(session: nox.Session, name: str) -> str:
    """Path of a cached tool (building it on the first call); progress goes to the log."""
    import subprocess

    session.log(f"toolchain: {name}")
    out = subprocess.run(
        [sys.executable, str(COLLECTOR_TOOLCHAIN), name],
        check=False,
        stdout=subprocess.PIPE,
        text=True,
    )
    if out.returncode != 0:
        session.error(f"collector-config/toolchain.py {name} failed ({out.returncode})")
    return out.stdout.strip().splitlines()[-1]


@nox.session(python=PYTHON, tags=["ci"])
def collector(session: nox.Session) -> None:
    """Build otelcol-visiontel, validate every recipe, run the Prometheus rule tests."""
    env = {
        "VISIONTEL_OTELCOL": _collector_tool(session, "otelcol"),
        "VISIONTEL_PROMTOOL": _collector_tool(session, "promtool"),
        **STRICT_SKIPS,
    }
    session.install(*COLLECTOR_TEST_DEPS)
    tests = str(ROOT / "tests" / "collector")
    session.run("pytest", tests, "-m", "not e2e", *session.posargs, env=env)


# In CI too: with the binaries cached it takes ~2 min; on a fresh machine the Jaeger build
# adds ~10 min of CPU (measured: 28 min wall under a load of 6, far less on an idle CI run).
@nox.session(python=PYTHON, tags=["ci"])
def stack(session: nox.Session) -> None:
    """Jaeger and VictoriaLogs (built from Go modules) + Zipkin (Maven Central jar, on Java
    17) + Prometheus (Debian) + otelcol-visiontel on loopback; Chromium (Debian) for the
    Lens UI test.

    `nox -s stack` runs the end-to-end tests against it; `nox -s stack -- up` starts it
    and keeps it running until Ctrl-C.
    """
    env = {
        "VISIONTEL_OTELCOL": _collector_tool(session, "otelcol"),
        "VISIONTEL_PROMTOOL": _collector_tool(session, "promtool"),
        "VISIONTEL_PROMETHEUS": _collector_tool(session, "prometheus"),
        "VISIONTEL_JAEGER": _collector_tool(session, "jaeger"),
        "VISIONTEL_ZIPKIN": _collector_tool(session, "zipkin"),
        "VISIONTEL_VICTORIALOGS": _collector_tool(session, "victorialogs"),
        **STRICT_SKIPS,
    }
    if session.posargs == ["up"]:
        stack_py = str(ROOT / "collector-config" / "stack" / "stack.py")
        session.run("python", stack_py, "up", env=env)
        return
    env["VISIONTEL_CHROMIUM"] = _collector_tool(session, "chromium")  # not for `up`
    # The whole workspace: tests/demo's e2e test runs `visiontel demo --stack` end to end.
    _install_workspace(session, TORCH_NEWEST, *COLLECTOR_TEST_DEPS)
    tests = [str(ROOT / "tests" / "collector"), str(ROOT / "tests" / "demo")]
    session.run("pytest", *tests, "-m", "e2e", *session.posargs, env=env)


# --- tests/reliability (issue 7): faults, load, hostile input, secrets ------------------------
# VISIONTEL_RELIABILITY_PROFILE=short|full picks outage/load durations; `reliability` runs
# the full profile (~20 min) and rewrites docs/reliability.md from the measured rows,
# `reliability_short` (CI) runs the short one and checks the doc lists every fault.
RELIABILITY_DEPS = ("cryptography", "atheris", "opentelemetry-exporter-otlp", "pyyaml")


def _reliability(session: nox.Session, profile: str) -> None:
    _install_workspace(session, TORCH_NEWEST, *RELIABILITY_DEPS)
    env = {
        "VISIONTEL_RELIABILITY_PROFILE": os.environ.get("VISIONTEL_RELIABILITY_PROFILE", profile),
        "VISIONTEL_OTELCOL": _collector_tool(session, "otelcol"),
        **STRICT_SKIPS,
    }
    profile = env["VISIONTEL_RELIABILITY_PROFILE"]
    # This run's id: every row carries it, and render.py takes only this run's rows.
    env["VISIONTEL_RELIABILITY_RUN"] = uuid.uuid4().hex
    results = pathlib.Path(session.create_tmp()) / f"reliability-{profile}.jsonl"
    results.unlink(missing_ok=True)
    env["VISIONTEL_RELIABILITY_RESULTS"] = str(results)
    suite = ROOT / "tests" / "reliability"
    # -p no:logging: pytest's log capture would keep the SDK's retry records (and the
    # batches their tracebacks reference) alive, charging the tests' memory to the SDK.
    session.run("pytest", "-p", "no:logging", str(suite), *session.posargs, env=env)
    render = [
        "python",
        str(suite / "render.py"),
        str(results),
        "--run",
        env["VISIONTEL_RELIABILITY_RUN"],
    ]
    session.run(*render, "--write" if profile == "full" else "--check")


@nox.session(python=PYTHON)
def reliability(session: nox.Session) -> None:
    """The whole reliability suite, full profile; regenerates docs/reliability.md."""
    _reliability(session, "full")


@nox.session(python=PYTHON, tags=["ci"])
def reliability_short(session: nox.Session) -> None:
    """The reliability suite with short outages and load (CI, a few minutes)."""
    _reliability(session, "short")
