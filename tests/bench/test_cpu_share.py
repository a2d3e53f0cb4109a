"""bench/cpu_share.py's sample classifier: the instrument behind its telemetry shares."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

_SCRIPT = pathlib.Path(__file__).parents[2] / "bench" / "cpu_share.py"
_spec = importlib.util.spec_from_file_location("cpu_share", _SCRIPT)
assert _spec is not None and _spec.loader is not None
cpu_share = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cpu_share)

SITE = "/venv/lib/python3.11/site-packages"
RUN = "run (/src/visiontel/demo/_detector.py:203)"
HOOK = f"ChildProbes._add_wrapper.<locals>.stamped_forward ({SITE}/visiontel/torch/_probes.py:108)"
CONV = f"Conv2d.forward ({SITE}/torch/nn/modules/conv.py:548)"
START = f"Tracer.start_span ({SITE}/opentelemetry/sdk/trace/__init__.py:1100)"
STAGE = "stage.__enter__ (/repo/packages/visiontel-torch/src/visiontel/torch/_stage.py:80)"
WAIT = "Condition.wait (/usr/lib/python3.11/threading.py:331)"
ENCODE = f"_Printer._FieldToJsonObject ({SITE}/google/protobuf/json_format.py:310)"


@pytest.mark.parametrize(
    ("stack", "kind"),
    [
        ([RUN, STAGE, START], "telemetry"),  # the SDK under a visiontel stage
        ([RUN, HOOK], "telemetry"),  # the hook's own code
        ([RUN, HOOK, CONV], "other"),  # a forward wrapped by the hook is the model's
        ([RUN, CONV], "other"),
        ([RUN, HOOK, CONV, START], "telemetry"),  # a span started inside a forward
        (
            ["BatchProcessor.worker (x/opentelemetry/sdk/_shared_internal/__init__.py:159)", WAIT],
            "waiting",
        ),
        ([RUN, "Queue.get (/usr/lib/python3.11/queue.py:180)"], "other"),  # running, not blocked
        ([RUN, "Queue.get (/usr/lib/python3.11/queue.py:171)", WAIT], "waiting"),
        (
            [
                "FileSpanExporter.export "
                "(x/opentelemetry/exporter/otlp/json/file/trace_exporter.py:60)",
                ENCODE,
            ],
            "telemetry",
        ),
    ],
)
def test_classify(stack: list[str], kind: str) -> None:
    assert cpu_share.classify(stack) == kind


def test_report_shares(capsys: pytest.CaptureFixture[str]) -> None:
    raw = "\n".join(
        [
            f"thread (1): MainThread;{RUN};{HOOK};{CONV} 90",
            f"thread (1): MainThread;{RUN};{STAGE};{START} 10",
            f"thread (7): OtelBatchSpanRecordProcessor;{ENCODE} 5",
            f"thread (7): OtelBatchSpanRecordProcessor;{WAIT} 40",
            f"thread (9): Thread-3 (_run);{RUN} 5",
        ]
    )
    cpu_share.report(raw, "tinydet", 0)
    out = capsys.readouterr().out
    assert "110 active samples" in out  # waiting samples are not counted
    assert "telemetry: 10.0% of the main thread, 13.6% of the process" in out
    assert "0.900 (main thread bounds, spare cores) to 0.864 (every core busy)" in out
    assert "| other threads | 4.5% | 0.0% | 0 |" in out
