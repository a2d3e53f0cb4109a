"""The meta distribution instruments nothing itself; the three it installs do."""

_instruments: tuple[str, ...] = ()
