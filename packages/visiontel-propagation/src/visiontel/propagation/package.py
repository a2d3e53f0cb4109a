"""Library versions this package works with (read by opentelemetry-instrumentation).

Propagation instruments no third-party library itself: carriers are plain Python
types, and gRPC / torch.multiprocessing are only touched when the caller uses them.
"""

_instruments: tuple[str, ...] = ()
_supports_metrics = True
