"""OpenTelemetry for the Ultralytics (YOLO) predictor.

Per image: a ``predict <model>`` span (a new trace, or a child of the current context) with
``preprocess``, ``inference`` (the network's spans from visiontel-torch below it),
``postprocess`` (NMS) and, for ``track()``, ``tracker`` spans; a batch span linked to every
image of a batch; stage durations with exemplars, detections per image and per class, and
a confidence histogram. Under ``opentelemetry-instrument`` the ``ultralytics`` entry point
(``UltralyticsInstrumentor``) does it for every model, ``yolo predict`` included::

    from ultralytics import YOLO
    from visiontel.ultralytics import instrument_yolo

    model = instrument_yolo(YOLO("yolov8n.pt"))
    model.predict("bus.jpg")

Nothing of Ultralytics is imported until ``instrument()`` or ``instrument_yolo`` runs.
"""

from visiontel.ultralytics._config import UltralyticsConfig
from visiontel.ultralytics._instrumentor import (
    UltralyticsInstrumentor,
    flush,
    instrument_yolo,
    uninstrument_yolo,
)
from visiontel.ultralytics.version import __version__

__all__ = [
    "UltralyticsConfig",
    "UltralyticsInstrumentor",
    "__version__",
    "flush",
    "instrument_yolo",
    "uninstrument_yolo",
]
