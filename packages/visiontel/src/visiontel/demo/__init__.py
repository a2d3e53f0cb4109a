"""``visiontel demo``: an instrumented three-service detection pipeline on one machine.

A frame source, a detector (a small torch model with random weights, on CPU or GPU) and a
tracker run as separate processes talking gRPC on loopback, with visiontel-torch,
visiontel-gpu and visiontel-propagation all on. Telemetry goes to OTLP JSON files, or to
an OTLP endpoint when one is set. Needs the ``demo`` extra: ``pip install "visiontel[demo]"``.
"""

from visiontel.demo._config import DemoConfig
from visiontel.demo._errors import DemoError, UsageError

__all__ = ["DemoConfig", "DemoError", "UsageError"]
