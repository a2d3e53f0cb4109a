"""Notice when layer spans outrun the span processor, and say what to change.

The SDK's ``BatchSpanProcessor`` drops spans silently once its queue is full
(``OTEL_BSP_MAX_QUEUE_SIZE``, 2048 by default). Once a second we look at our own span rate
and, where the processor exposes it, how full its queue is; the first time either says
spans will be lost, we log one warning naming the settings that fit.
"""

from __future__ import annotations

import time

from opentelemetry import trace

from visiontel._support.env import env_int
from visiontel.torch._otel_private import batch_queue_fill
from visiontel.torch._safety import warn_once

_CHECK_INTERVAL_S = 1.0
_QUEUE_FILL_WARNING = 0.8
# The queue must hold what is produced while one export is in flight; an OTLP export to a
# remote collector can take a second. We suggest enough room for a 5 s stall.
_EXPORT_STALL_S = 1.0
_SUGGESTED_HEADROOM_S = 5.0


class VolumeWatch:
    def __init__(self, tracer_provider: trace.TracerProvider | None) -> None:
        self._tracer_provider = tracer_provider
        self._window_start = time.monotonic()
        self._spans_in_window = 0
        self.last_rate = 0.0
        self.warned = False

    def observe(self, spans: int) -> None:
        self._spans_in_window += spans
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed < _CHECK_INTERVAL_S:
            return
        self.last_rate = self._spans_in_window / elapsed
        self._window_start, self._spans_in_window = now, 0
        if self.warned:
            return
        provider = self._tracer_provider or trace.get_tracer_provider()
        queue_size, queue_capacity = batch_queue_fill(provider)
        # The SDK's own default when the processor does not tell (not a BatchSpanProcessor).
        capacity = queue_capacity or env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048, minimum=1)
        filling = queue_capacity and queue_size >= _QUEUE_FILL_WARNING * queue_capacity
        outrunning = self.last_rate * _EXPORT_STALL_S > capacity
        if filling or outrunning:
            self.warned = True
            suggested = int(self.last_rate * _SUGGESTED_HEADROOM_S) + 1
            warn_once(
                "volume",
                "visiontel.torch produces %.0f spans/s; the span processor queue (%d) will "
                "drop spans. Set OTEL_BSP_MAX_QUEUE_SIZE=%d and OTEL_BSP_MAX_EXPORT_BATCH_SIZE="
                "2048, or lower VISIONTEL_TORCH_MAX_LAYER_SPANS / use granularity 'stage'.",
                self.last_rate,
                capacity,
                suggested,
            )
