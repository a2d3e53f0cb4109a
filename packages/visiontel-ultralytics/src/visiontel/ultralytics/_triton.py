"""Trace context into Triton requests, so that Triton's own trace joins the frame's.

Ultralytics' ``TritonRemoteModel`` calls ``triton_client.infer(...)`` without headers.
Triton (24.01 and later, with ``--trace-config mode=opentelemetry``) continues a trace from
a ``traceparent`` request header. The client object is wrapped in place (once) by a proxy
whose ``infer`` adds the current context, written by the global propagator (so
``OTEL_PROPAGATORS`` decides the headers), to whatever headers the caller passed.
"""

from __future__ import annotations

from typing import Any

import wrapt
from opentelemetry import propagate

from visiontel.ultralytics import _ultralytics_private


class _TracingTritonClient(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """``tritonclient`` http or grpc ``InferenceServerClient`` with traced ``infer``."""

    def infer(self, *args: Any, **kwargs: Any) -> Any:
        headers = dict(kwargs.get("headers") or {})
        propagate.inject(headers)
        kwargs["headers"] = headers
        return self.__wrapped__.infer(*args, **kwargs)


def inject_headers(autobackend: Any) -> bool:
    """Wrap the Triton client of a ``triton`` backend; False for other formats."""
    if _ultralytics_private.backend_format(autobackend) != "triton":
        return False
    remote = _ultralytics_private.loaded_model(autobackend)
    client = getattr(remote, "triton_client", None)
    if client is None:
        return False
    if not isinstance(client, _TracingTritonClient):
        remote.triton_client = _TracingTritonClient(client)
    return True
