"""OpenTelemetry for PyTorch vision inference.

Spans per model forward, pipeline stage and (on demand) layer, built from module hooks that
only record timestamps; GPU time from pooled CUDA events read without synchronising the
stream; inference metrics (duration, images, detections per image) with exemplars.

    from visiontel.torch import instrument_model, stage

    instrument_model(detector, name="yolo", version="v8n")
    with stage("preprocess"):
        batch = prepare(frames)
    detections = detector(batch)

Under ``opentelemetry-instrument`` the ``torch`` entry point (``TorchInstrumentor``) does
this without code changes.
"""

from visiontel.torch._api import flush, instrument_model, is_instrumented, uninstrument_model
from visiontel.torch._config import Granularity
from visiontel.torch._instrumentor import TorchInstrumentor
from visiontel.torch._metrics import DetectionCounter, count_detections
from visiontel.torch._stage import stage
from visiontel.torch.version import __version__

__all__ = [
    "DetectionCounter",
    "Granularity",
    "TorchInstrumentor",
    "__version__",
    "count_detections",
    "flush",
    "instrument_model",
    "is_instrumented",
    "stage",
    "uninstrument_model",
]
