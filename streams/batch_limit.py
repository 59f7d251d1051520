"""How many messages the worker takes per batch, so that one commit holds Redis for about
``target_ms``.

A batch commits as one Lua script, and Redis serves nothing else while it runs: the feed
API's reads queue behind it. A 5,000-event batch of a worker catching up holds Redis for
200-500 ms, which is the API's p99 (measured by `bench soak`). Smaller batches cost the worker
some throughput (fewer increments merge, more round trips per event), so the limit follows
the measured commit time instead of being fixed small: it shrinks when commits run long and
grows back while they are short.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Largest factor the limit moves by after one commit: one odd commit (a landmark rotation,
#: a noisy neighbour) must not swing it.
MAX_STEP = 2.0


@dataclass
class BatchLimit:
    """The current limit, between ``smallest`` and ``largest``.

    Examples:
        >>> limit = BatchLimit(largest=5000, target_ms=20.0)
        >>> limit.observe(events=5000, commit_ms=200.0)
        2500
        >>> limit.observe(events=2500, commit_ms=40.0)
        1250
        >>> limit.observe(events=1250, commit_ms=10.0)
        2500
        >>> BatchLimit(largest=5000, target_ms=0.0).observe(events=5000, commit_ms=500.0)
        5000
    """

    largest: int
    target_ms: float
    smallest: int = 100
    current: int = 0

    def __post_init__(self) -> None:
        self.smallest = min(self.smallest, self.largest)
        self.current = self.current or self.largest

    def observe(self, *, events: int, commit_ms: float) -> int:
        """Adjust to a commit of ``events`` events that took ``commit_ms``; return the new
        limit. A target of 0 keeps the largest limit."""
        if self.target_ms <= 0 or events <= 0:
            return self.current
        per_event_ms = max(commit_ms, 1e-3) / events
        wanted = self.target_ms / per_event_ms
        step = min(max(wanted / self.current, 1.0 / MAX_STEP), MAX_STEP)
        if events < self.current and step > 1.0:
            # A batch below the limit (the stream was slower than the worker) says nothing
            # about a fuller one; grow only from full batches.
            return self.current
        self.current = int(min(max(self.current * step, self.smallest), self.largest))
        return self.current
