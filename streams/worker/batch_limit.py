"""How many messages the worker takes per batch, so that one commit holds Redis for about
``target_ms`` while the worker keeps up.

A batch commits as one Lua script, and Redis serves nothing else while it runs: the feed
API's reads queue behind it. A 5,000-event batch holds Redis for 200-500 ms on a busy machine,
which became the API's p99 in `bench soak`. Smaller batches cost the worker throughput (fewer
increments merge, more round trips per event: 20 ms commits took ingest from 16.6k to 10.7k
events/s), so two loops set the limit:

- per commit, the limit follows the measured commit time towards the target;
- per heartbeat, a backlog that keeps growing (the worker cannot keep up with commits this
  short) doubles the pressure, which multiplies the target, and a backlog below one batch
  halves it again. A worker that never catches up is worse than a slower read.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Largest factor the limit moves by after one commit: one odd commit (a landmark rotation,
#: a noisy neighbour) must not swing it.
MAX_STEP = 2.0
#: Largest multiple of the target a backlog can push commits to.
MAX_PRESSURE = 64.0


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

        A growing backlog lets commits run longer; none brings them back to the target:

        >>> limit.observe_backlog(10_000), limit.observe_backlog(20_000)
        (2.0, 4.0)
        >>> limit.observe(events=2500, commit_ms=20.0)
        5000
        >>> limit.observe_backlog(0), limit.observe_backlog(0)
        (2.0, 1.0)
    """

    largest: int
    target_ms: float
    smallest: int = 100
    current: int = 0
    pressure: float = 1.0
    _last_backlog: int = 0

    def __post_init__(self) -> None:
        self.smallest = min(self.smallest, self.largest)
        self.current = self.current or self.largest

    def observe(self, *, events: int, commit_ms: float, polled: int | None = None) -> int:
        """Adjust to a commit of ``events`` events that took ``commit_ms``, from a batch of
        ``polled`` messages (default: ``events``); return the new limit. A target of 0 keeps
        the largest limit."""
        if self.target_ms <= 0 or events <= 0:
            return self.current
        per_event_ms = max(commit_ms, 1e-3) / events
        wanted = self.target_ms * self.pressure / per_event_ms
        step = min(max(wanted / self.current, 1.0 / MAX_STEP), MAX_STEP)
        if (events if polled is None else polled) < self.current and step > 1.0:
            # A batch below the limit (the stream was slower than the worker) says nothing
            # about a fuller one; grow only from full batches. (Messages, not events: a
            # dead letter in a full batch must not stop it growing.)
            return self.current
        self.current = int(min(max(self.current * step, self.smallest), self.largest))
        return self.current

    def observe_backlog(self, backlog: int) -> float:
        """Adjust the pressure to the messages waiting (once per heartbeat); return it."""
        if backlog > self._last_backlog and backlog > self.current:
            if self.current < self.largest:  # past the largest batch, more buys nothing
                self.pressure = min(self.pressure * 2.0, MAX_PRESSURE)
        elif backlog <= self.current:
            self.pressure = max(self.pressure / 2.0, 1.0)
        self._last_backlog = backlog
        return self.pressure
