"""What a worker counts: the figures of its heartbeat, its metrics and its log line."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass
class WorkerStats:
    """Counters a worker reports in its heartbeat."""

    applied: int = 0
    skipped_duplicates: int = 0
    #: Interactions dead-lettered because their event id was applied before (re-sends).
    resent: int = 0
    conflicts: int = 0
    dead_lettered: int = 0
    batches: int = 0
    last_batch_ms: float = 0.0
    started_at: float = field(default_factory=time.time)
    #: Applied events by kind: interaction types, "item", "impression" (for events/s by type).
    by_type: Counter[str] = field(default_factory=Counter)
    #: Event time to applied, in ms, of recent events (sampled; cleared by each heartbeat).
    freshness_ms: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    #: Messages behind per "topic/partition", as of the last heartbeat.
    lag: dict[str, int] = field(default_factory=dict)


def percentiles(values: deque[float]) -> dict[str, float | None]:
    """p50 and p99 (nearest rank) of recent freshness samples; None when there are none.

    Examples:
        >>> percentiles(deque([3.0, 1.0, 2.0]))
        {'p50': 2.0, 'p99': 3.0}
        >>> percentiles(deque())
        {'p50': None, 'p99': None}
    """
    if not values:
        return {"p50": None, "p99": None}
    ordered = sorted(values)
    n = len(ordered)
    return {
        "p50": round(ordered[(n - 1) // 2], 3),
        "p99": round(ordered[min(n - 1, -(-99 * n // 100) - 1)], 3),
    }
