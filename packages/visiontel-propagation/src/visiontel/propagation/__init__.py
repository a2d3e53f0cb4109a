"""One OpenTelemetry trace per video frame, across threads, processes and transports.

Carriers (``inject_*`` writes the current context in the format ``OTEL_PROPAGATORS``
names, plus the frame identity; ``extract_*`` returns a
:class:`~opentelemetry.context.Context` and never raises on bad input):

* metadata dicts: :func:`inject_dict` / :func:`extract_dict`
* HTTP headers: :func:`inject_http` / :func:`extract_http`
* gRPC metadata: :func:`inject_grpc` / :func:`extract_grpc`
* message-queue header lists: :func:`inject_mq` / :func:`extract_mq`
* shared-memory slots: :func:`inject_slot` / :func:`extract_slot` (:data:`SLOT_SIZE` bytes)

Stages: :func:`start_frame`, :func:`continue_frame`, :func:`batch_span`,
:func:`record_frame_latency`, and :func:`start_span` for a span of yours that every frame
makes. Stream health: :func:`observe_frame`, :func:`end_streams`, :class:`StreamHealth`,
:class:`FrameBatcher`. Hand-off: :func:`bind`,
:class:`ContextThreadPoolExecutor`, :class:`ContextProcessPoolExecutor`, :class:`ContextQueue`.

Serving: :class:`ForceTracePropagator` and :class:`ForceTraceSampler` (the SDK is imported
only when the sampler is first used) trace a request sent with ``visiontel-force-trace: 1``;
:func:`trace_response_headers` and :func:`set_grpc_trace_response` hand the trace id back.
"""

from typing import TYPE_CHECKING

from visiontel.propagation._batch import Batch, batch_span
from visiontel.propagation._batcher import FrameBatcher
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
from visiontel.propagation._serving import (
    FORCE_TRACE_ATTRIBUTE,
    FORCE_TRACE_HEADER,
    ForceTracePropagator,
    force_trace,
    set_grpc_trace_response,
    trace_response_headers,
)
from visiontel.propagation._slot import SLOT_SIZE, clear_slot, extract_slot, inject_slot, pack_slot
from visiontel.propagation._spans import start_span
from visiontel.propagation._stage import (
    LATENCY_METRIC,
    FrameLatency,
    continue_frame,
    record_frame_latency,
    start_frame,
)
from visiontel.propagation._streams import StreamHealth, end_streams, observe_frame
from visiontel.propagation.version import __version__

if TYPE_CHECKING:
    from visiontel.propagation._sampler import ForceTraceSampler, force_trace_sampler

# Names whose module needs the OpenTelemetry SDK: imported on first use, so the package
# keeps working with the API alone.
_NEEDS_SDK = frozenset(("ForceTraceSampler", "force_trace_sampler"))


def __getattr__(name: str) -> object:
    if name in _NEEDS_SDK:
        from visiontel.propagation import _sampler

        return getattr(_sampler, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORCE_TRACE_ATTRIBUTE",
    "FORCE_TRACE_HEADER",
    "FRAME_HEADER",
    "LATENCY_METRIC",
    "SLOT_SIZE",
    "Batch",
    "ContextProcessPoolExecutor",
    "ContextQueue",
    "ContextThreadPoolExecutor",
    "ForceTracePropagator",
    "ForceTraceSampler",
    "FrameBatcher",
    "FrameIdentity",
    "FrameLatency",
    "FramePropagator",
    "Limits",
    "StreamHealth",
    "__version__",
    "batch_span",
    "bind",
    "clear_slot",
    "configure",
    "continue_frame",
    "end_streams",
    "extract_dict",
    "extract_grpc",
    "extract_http",
    "extract_mq",
    "extract_slot",
    "force_trace",
    "force_trace_sampler",
    "get_frame",
    "inject_dict",
    "inject_grpc",
    "inject_http",
    "inject_mq",
    "inject_slot",
    "limits",
    "multiprocessing_queue",
    "observe_frame",
    "pack_slot",
    "record_frame_latency",
    "rejected_counts",
    "set_frame",
    "set_grpc_trace_response",
    "start_frame",
    "start_span",
    "strip_credentials",
    "trace_response_headers",
]
