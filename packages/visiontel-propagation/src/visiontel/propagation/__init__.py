"""One OpenTelemetry trace per video frame, across threads, processes and transports.

Carriers (``inject_*`` writes the current context, ``extract_*`` returns a
:class:`~opentelemetry.context.Context` and never raises on bad input):

* metadata dicts: :func:`inject_dict` / :func:`extract_dict`
* HTTP headers: :func:`inject_http` / :func:`extract_http`
* gRPC metadata: :func:`inject_grpc` / :func:`extract_grpc`
* message-queue header lists: :func:`inject_mq` / :func:`extract_mq`
* shared-memory slots: :func:`inject_slot` / :func:`extract_slot` (:data:`SLOT_SIZE` bytes)

Stages: :func:`start_frame`, :func:`continue_frame`, :func:`batch_span`,
:func:`record_frame_latency`. Hand-off: :func:`bind`, :class:`ContextThreadPoolExecutor`,
:class:`ContextProcessPoolExecutor`, :class:`ContextQueue`.
"""

from visiontel.propagation._batch import Batch, batch_span
from visiontel.propagation._carriers import (
    extract_dict,
    extract_grpc,
    extract_http,
    extract_mq,
    inject_dict,
    inject_grpc,
    inject_http,
    inject_mq,
)
from visiontel.propagation._diag import Limits, configure, limits, rejected_counts
from visiontel.propagation._frame import (
    FRAME_HEADER,
    FrameIdentity,
    FramePropagator,
    get_frame,
    set_frame,
    strip_credentials,
)
from visiontel.propagation._handoff import (
    ContextProcessPoolExecutor,
    ContextQueue,
    ContextThreadPoolExecutor,
    bind,
    multiprocessing_queue,
)
from visiontel.propagation._slot import SLOT_SIZE, clear_slot, extract_slot, inject_slot, pack_slot
from visiontel.propagation._stage import (
    LATENCY_METRIC,
    FrameLatency,
    continue_frame,
    record_frame_latency,
    start_frame,
)
from visiontel.propagation.version import __version__

__all__ = [
    "FRAME_HEADER",
    "LATENCY_METRIC",
    "SLOT_SIZE",
    "Batch",
    "ContextProcessPoolExecutor",
    "ContextQueue",
    "ContextThreadPoolExecutor",
    "FrameIdentity",
    "FrameLatency",
    "FramePropagator",
    "Limits",
    "__version__",
    "batch_span",
    "bind",
    "clear_slot",
    "configure",
    "continue_frame",
    "extract_dict",
    "extract_grpc",
    "extract_http",
    "extract_mq",
    "extract_slot",
    "get_frame",
    "inject_dict",
    "inject_grpc",
    "inject_http",
    "inject_mq",
    "inject_slot",
    "limits",
    "multiprocessing_queue",
    "pack_slot",
    "record_frame_latency",
    "rejected_counts",
    "set_frame",
    "start_frame",
    "strip_credentials",
]
