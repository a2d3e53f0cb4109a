"""atheris harness: libFuzzer-driven bytes into every extract path of visiontel-propagation.

    python tests/reliability/fuzz_extract.py -max_total_time=60 [corpus dir]

An exception from an extract path, or an internal error it logged and swallowed, is a
crash (exit code != 0). test_hostile_input.py runs this.
"""

from __future__ import annotations

import logging
import sys

import atheris

with atheris.instrument_imports():
    import visiontel.propagation as vp

KEYS = ["traceparent", "tracestate", "baggage", "visiontel-frame", "grpc-trace-bin", "Baggage"]


class _Fail(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError(f"internal error logged: {record.getMessage()}")


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    pairs: list[tuple[str, object]] = []
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        key = KEYS[fdp.ConsumeIntInRange(0, len(KEYS) - 1)]
        if fdp.ConsumeBool():
            pairs.append((key, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))))
        else:
            pairs.append((key, fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 300))))
    rest = fdp.ConsumeBytes(vp.SLOT_SIZE * 2)
    text_pairs = {k: v if isinstance(v, str) else v.decode("latin-1") for k, v in pairs}
    vp.extract_dict(text_pairs)
    vp.extract_http(text_pairs)
    vp.extract_grpc(pairs)  # type: ignore[arg-type]
    vp.extract_mq(pairs)  # type: ignore[arg-type]
    vp.extract_slot(rest.ljust(vp.SLOT_SIZE, b"\0"))
    vp.FramePropagator().extract(text_pairs)


def main() -> None:
    logging.getLogger("visiontel.propagation").addHandler(_Fail(logging.ERROR))
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
