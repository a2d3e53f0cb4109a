"""Library versions this package works with.

visiontel-support instruments no library: it holds what every visiontel distribution
shares (environment parsing, internal-error reporting, OTLP set-up, URL redaction).
"""

_instruments: tuple[str, ...] = ()
