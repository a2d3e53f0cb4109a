"""The table the small alternating benches print (``_``: not a bench of its own)."""

from __future__ import annotations

import statistics
from collections.abc import Callable


def print_paired_table(
    times: dict[str, list[float]],
    baseline: str,
    value_header: str,
    value: Callable[[float], str],
    ratio_digits: int = 3,
) -> None:
    """Per variant, ``value`` of its median block and the median over rounds of (its block /
    ``baseline``'s block of the same round): machine drift cancels out within a round."""
    base = times[baseline]
    print(f"| variant | {value_header} | median paired ratio |")
    print("|---|---:|---:|")
    for label, blocks in times.items():
        ratio = statistics.median(v / b for v, b in zip(blocks, base, strict=True))
        print(f"| {label} | {value(statistics.median(blocks))} | {ratio:.{ratio_digits}f}x |")
