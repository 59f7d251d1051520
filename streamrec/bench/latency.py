"""Latency statistics for the benchmarks: nearest-rank percentiles and evenly spread probes.

Nearest rank, not interpolation: the p-th percentile of n samples is the ``ceil(p·n/100)``-th
smallest, always a latency that was observed. Of 200 samples, p99 is the 198th smallest (two
were slower); of 100, the 99th.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the ``ceil(q·n/100)``-th smallest value (an observed one).

    Examples:
        >>> percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50)
        3.0
        >>> percentile([float(v) for v in range(1, 201)], 99)  # 3rd largest of 200
        198.0
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside [0, 100]")
    ordered = sorted(values)
    rank = math.ceil(Fraction(str(q)) * len(ordered) / 100)  # exact, unlike 0.99 * 200
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def latency_figures(
    prefix: str, seconds: Sequence[float], missing: int = 0
) -> dict[str, float | None]:
    """``{prefix}p50_ms``, ``p99_ms`` and ``max_ms`` of latencies given in seconds.

    ``missing`` samples never arrived: they count as slower than any that did, so a
    percentile that falls on one of them is None (unknown), never a flattering figure.

    Examples:
        >>> latency_figures("x_", [0.010, 0.020, 0.030])
        {'x_p50_ms': 20.0, 'x_p99_ms': 30.0, 'x_max_ms': 30.0}
        >>> latency_figures("x_", [0.010, 0.020, 0.030], missing=1)
        {'x_p50_ms': 20.0, 'x_p99_ms': None, 'x_max_ms': None}
    """
    values = [*seconds, *([math.inf] * missing)]

    def ms(value: float) -> float | None:
        return round(value * 1000.0, 3) if math.isfinite(value) else None

    if not values:
        return {f"{prefix}p50_ms": None, f"{prefix}p99_ms": None, f"{prefix}max_ms": None}
    return {
        f"{prefix}p50_ms": ms(percentile(values, 50)),
        f"{prefix}p99_ms": ms(percentile(values, 99)),
        f"{prefix}max_ms": ms(max(values)),
    }


def schedule(count: int, start_s: float, span_s: float, phase: float) -> list[float]:
    """``count`` send times spread evenly over ``[start_s, start_s + span_s)``.

    ``phase`` (0 ≤ phase < 1) shifts them within their slot, so two kinds of probe do not fire
    at the same instant.

    Examples:
        >>> schedule(4, 1.0, 2.0, 0.5)
        [1.25, 1.75, 2.25, 2.75]
    """
    if count <= 0:
        return []
    slot = span_s / count
    return [start_s + (n + phase) * slot for n in range(count)]
