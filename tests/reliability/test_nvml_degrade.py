"""An older driver: the NVML simulator rebuilt without each optional entry point in turn
(visiontel.gpu.testing, build(hide=...): the symbol is really not exported), while an
application thread collects every 20 ms. Every series that does not need the missing call
stays and keeps fresh values, the ones that need it are gone, the loss is counted once per
device (not per sweep), events go off without the event calls, and the application never
sees an exception."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from reliability_support import PROFILE, metric_points

from visiontel.gpu import GPUInstrumentor
from visiontel.gpu import _nvml_calls as calls
from visiontel.gpu.testing import EVENT_XID, NvmlSimulator
from visiontel.gpu.testing.degrade import (
    COUNTED,
    GPU0,
    GPUS,
    Points,
    Series,
    errors,
    script,
    series,
    without,
)

GiB = 1024**3
PHASE_S = 0.5 if PROFILE.name == "short" else 3.0  # per build, after its first sweep
INTERVAL_S = 0.05
COLLECT_BOUND_S = 0.5  # as in test_nvml_faults: an export never waits on NVML
FRESH_BOUND_S = 10.0  # a changed reading reaches the exporter (a guard, not a speed bound)


def value(p: Points, name: str, **attrs: Any) -> Any:
    return next(
        (v for a, v in p.get(name, []) if all(a.get(k) == x for k, x in attrs.items())), None
    )


class Run:
    """One build: instrument, let an app thread collect for PHASE_S while a reading
    changes, and keep what it saw."""

    def __init__(self, directory: Path, proc_root: Path, hide: tuple[str, ...]) -> None:
        self.hide = hide
        self.sim = NvmlSimulator.build(directory, hide=hide)
        self.app_errors: list[BaseException] = []
        self.worst_collect = 0.0
        self.fresh_after: float | None = None
        # Without an event call nothing registers; without nvmlEventSetFree events still flow.
        self.events_expected = not (set(hide) & (set(calls.EVENTS) - {calls.EVENT_SET_FREE}))
        self.xid_records = 0
        with pytest.MonkeyPatch.context() as mp:
            for key, val in self.sim.env().items():
                mp.setenv(key, val)
            mp.setenv("VISIONTEL_GPU_PROC_ROOT", str(proc_root))
            self.sim.write(script())
            self._run()

    def _run(self) -> None:
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        logs = InMemoryLogRecordExporter()
        logger_provider = LoggerProvider()
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
        inst = GPUInstrumentor()
        inst.instrument(
            meter_provider=provider,
            logger_provider=logger_provider,
            interval=INTERVAL_S,
            events=True,
        )
        stop = threading.Event()
        latest: list[Points] = [{}]

        def app() -> None:
            while not stop.is_set():
                try:
                    sum(i * i for i in range(2000))  # the application's own work
                    started = time.perf_counter()
                    latest[0] = metric_points(reader)
                    self.worst_collect = max(self.worst_collect, time.perf_counter() - started)
                except BaseException as exc:  # what the application would see
                    self.app_errors.append(exc)
                time.sleep(0.02)

        thread = threading.Thread(target=app, name="app", daemon=True)
        try:
            assert inst.devices, f"no GPU with {self.hide} hidden"
            self.first = metric_points(reader)  # the first sweep's: every startup loss is in it
            thread.start()
            # A reading that does not need the hidden call changes: it must arrive.
            hidden_memory = calls.MEMORY in self.hide
            key = "gpu.0.utilization.gpu" if hidden_memory else "gpu.0.memory.used"
            new = 5 if hidden_memory else 33 * GiB
            self.sim.write(script(**{key: new, "event.0": f"0,{EVENT_XID},79"}))
            started = time.monotonic()
            while time.monotonic() - started < FRESH_BOUND_S:
                seen = (
                    value(latest[0], "hw.gpu.utilization", **{"hw.id": GPU0}, **GENERAL)
                    if hidden_memory
                    else value(latest[0], "hw.gpu.memory.usage", **{"hw.id": GPU0})
                )
                if seen == (0.05 if hidden_memory else new) and (
                    logs.get_finished_logs() or not self.events_expected
                ):
                    self.fresh_after = time.monotonic() - started
                    break
                time.sleep(0.02)
            time.sleep(max(0.0, PHASE_S - (time.monotonic() - started)))
            self.last = metric_points(reader)
            self.xid_records = len(logs.get_finished_logs())
        finally:
            stop.set()
            thread.join(timeout=30)
            inst.uninstrument()
            provider.shutdown()
            logger_provider.shutdown()


GENERAL = {"hw.gpu.task": "general"}


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.fail("the NVML simulator needs a C compiler (cc or gcc) on PATH")
    return tmp_path_factory.mktemp("nvml-degrade")


def test_nvml_each_optional_entry_point_hidden(directory, tmp_path, record):
    full = Run(directory, tmp_path, ())
    assert errors(full.last) == {}, "the full simulator should answer everything"
    baseline: Series = series(full.last)
    runs = [Run(directory, tmp_path, (hidden,)) for hidden in calls.OPTIONAL]
    present, gone, counted, later, unexpected = [], 0, 0, 0, []
    for run in runs:
        (hidden,) = run.hide
        expected = without(baseline, hidden) if hidden in calls.METRICS else baseline
        got = series(run.last)
        present.append(len(got))
        gone += len(baseline - got)
        if got != expected:
            missing, extra = len(expected - got), len(got - expected)
            unexpected.append(f"{hidden}: {missing} series missing, {extra} extra")
        if run.xid_records != run.events_expected:
            unexpected.append(f"{hidden}: {run.xid_records} XID log records")
        where = COUNTED.get(hidden, GPUS) if hidden in calls.METRICS else ()
        want = {("function_not_found", device): 1 for device in where}
        if errors(run.first) != want or errors(run.last) != want:
            unexpected.append(f"{hidden}: errors {errors(run.first)} then {errors(run.last)}")
        counted += sum(errors(run.first).values())
        later += sum(errors(run.last).values()) - sum(errors(run.first).values())
    runs.append(full)
    app_errors = [e for run in runs for e in run.app_errors]
    slow = [run.hide for run in runs if run.fresh_after is None]
    worst = max(run.worst_collect for run in runs)
    events_off = sum(not run.xid_records for run in runs)
    n_metrics, n_events = len(calls.METRICS), len(calls.EVENTS)
    record(
        "nvml-optional-entry-points-hidden",
        fault=f"an NVML with each optional entry point hidden, one at a time ({n_metrics} metric "
        f"calls, {n_events} event calls; the simulator built without the symbol) while an app "
        "thread collects every 20 ms",
        duration=f"{len(runs)} builds x {PHASE_S:g} s, sampler interval {INTERVAL_S * 1000:.0f} ms",
        measured=f"series of the full simulator: {len(baseline)}; with one call hidden: "
        f"{min(present)}-{max(present)} present, {gone} gone in all, each the hidden call's own "
        f"(runs off expectation: {len(unexpected)}); function_not_found counted {counted} "
        f"times, {later} more over the later sweeps; a changed reading arrived in every "
        f"build: {'yes' if not slow else f'no, {len(slow)} not'}; builds without the XID log "
        f"record: {events_off} (expected {n_events - 1}); app exceptions: "
        f"{len(app_errors)}; worst collect() {worst * 1000:.0f} ms (bound "
        f"{COLLECT_BOUND_S * 1000:.0f})",
        lost="only the series that need the missing call (and events without the event calls)",
    )
    assert not app_errors, repr(app_errors[:3])
    assert not unexpected, unexpected
    assert later == 0, "a missing entry point was counted again on later sweeps"
    assert not slow, f"fresh values did not arrive with {slow} hidden"
    assert worst < COLLECT_BOUND_S, "an export waited on NVML"
    assert gone > 0 and counted > 0
    assert full.xid_records == 1
