"""The catalog goes first: interactions and impressions wait while the items topic is behind.

What an interaction does depends on its item (its category for trending, its vector for the
session and user embeddings), so the order between the items topic and the others must not
depend on when a worker (re)started or how its fetches happened to interleave. The rule,
applied to every batch: a message of another topic is handed to the worker only once every
items partition is applied up to the high watermark the broker reported with the batch (this
worker's own items in flight count, and so do the batch's own items, which the processors
apply before its interactions). So an interaction always sees every item record that reached
Kafka before it was fetched; after a restart the catalog's backlog is applied before the
backlog of interactions, as it was live.

While the catalog is behind, the batch's other messages wait in memory and their partitions
are paused (librdkafka resumes them after the last message it delivered, so nothing is
fetched twice or skipped); the items partitions keep going. Items partitions another worker
owns are waited for through the store's offset table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from features.errors import StoreUnavailableError, TransportUnavailableError
from streams.io.transport import RawMessage, TopicPartition
from streams.worker.recovery import Rewindable

log = logging.getLogger(__name__)


def catalog_behind(ends: Mapping[int, int], applied: Mapping[int, int]) -> dict[int, int]:
    """Items partitions not applied up to their end: partition -> last offset to apply.

    ``ends`` holds each partition's high watermark (the next offset to be written), and
    ``applied`` the last offset applied of each (absent: nothing).

    Examples:
        >>> catalog_behind({0: 10, 1: 0, 2: 5}, {0: 9, 2: 3})
        {2: 4}
    """
    return {p: end - 1 for p, end in ends.items() if end > 0 and applied.get(p, -1) < end - 1}


@dataclass
class GateStats:
    """What the gate did, for the worker's heartbeat and /health."""

    #: Times the other topics had to wait for the catalog.
    holds: int = 0
    #: Seconds spent waiting, in total.
    waited_s: float = 0.0
    #: Messages waiting for the catalog right now.
    waiting: int = 0
    #: Times a wait outlasted ``max_wait_s`` and the others went on anyway.
    timeouts: int = 0


class CatalogGate:
    """A :class:`Rewindable` source that hands out other topics only behind the catalog."""

    def __init__(
        self,
        source: Rewindable,
        *,
        items_topic: str,
        stored_items: Callable[[], dict[int, int]],
        max_wait_s: float,
        check_every_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.items_topic = items_topic
        self.stored_items = stored_items
        self.max_wait_s = max_wait_s
        self.check_every_s = check_every_s
        self.clock = clock
        self.stats = GateStats()
        #: Last items offset known applied or handed to the worker (which applies them in
        #: order), per partition.
        self.emitted: dict[int, int] = {}
        #: Items partition -> last offset that must be applied before the others go on.
        self.targets: dict[int, int] | None = None
        #: Other-topic messages waiting for the catalog, in the order they were fetched.
        self.pending: list[RawMessage] = []
        self.paused: set[TopicPartition] = set()
        self._since = 0.0
        self._checked_at = float("-inf")
        self._generation: int | None = None
        self._revoked_paused: set[TopicPartition] = set()

    # --- Rewindable, delegated ----------------------------------------------------------------

    @property
    def generation(self) -> int:
        """The wrapped source's."""
        return self.source.generation

    @generation.setter
    def generation(self, value: int) -> None:
        self.source.generation = value

    @property
    def assigned(self) -> set[TopicPartition]:
        """The wrapped source's."""
        return self.source.assigned

    def commit(self, next_offsets: Mapping[TopicPartition, int]) -> None:
        """Commit through the wrapped source."""
        self.source.commit(next_offsets)

    def lag(self) -> dict[TopicPartition, int]:
        """The wrapped source's lag, with the messages waiting here counted as behind."""
        lag = self.source.lag()
        for msg in self.pending:
            tp = (msg.topic, msg.partition)
            lag[tp] = lag.get(tp, 0) + 1
        return lag

    def close(self) -> None:
        """Close the wrapped source."""
        self.source.close()

    def committed(self, tps: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        """The wrapped source's."""
        return self.source.committed(tps)

    def rewind(self, tp: TopicPartition, offset: int | None) -> None:
        """Rewind through the wrapped source; what was handed out or waits of ``tp`` is void."""
        self.source.rewind(tp, offset)
        if tp[0] == self.items_topic:
            self.emitted[tp[1]] = -1 if offset is None else offset - 1
        else:
            self.pending = [m for m in self.pending if (m.topic, m.partition) != tp]

    def pause(self, tps: Collection[TopicPartition]) -> None:
        """The wrapped source's."""
        self.source.pause(tps)

    def resume(self, tps: Collection[TopicPartition]) -> None:
        """Resume, except what waits here for the catalog."""
        self.source.resume(set(tps) - self.paused)

    def high_watermarks(self, topic: str) -> dict[int, int]:
        """The wrapped source's."""
        return self.source.high_watermarks(topic)

    # --- the gate --------------------------------------------------------------------------

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[RawMessage]:
        """The next batch: items at once; the rest once the catalog is applied up to its end."""
        self._forget_revoked()
        if self.targets is not None:
            if self._caught_up():
                return self._release()
            timeout_s = min(timeout_s, self.check_every_s)
        messages = self.source.poll_batch(max_messages, timeout_s)
        items = [m for m in messages if m.topic == self.items_topic]
        for msg in items:
            self.emitted[msg.partition] = max(msg.offset, self.emitted.get(msg.partition, -1))
        others = [m for m in messages if m.topic != self.items_topic]
        if not others:
            return messages
        if self.targets is None:
            self.targets = self._behind()
            if not self.targets:
                self.targets = None
                return messages
            self.stats.holds += 1
            self._since = self.clock()
            log.info(
                "the catalog is behind (items partitions %s): other topics wait for it",
                sorted(self.targets),
            )
        self._hold(others)
        return items

    def _behind(self) -> dict[int, int]:
        """Items partitions behind the broker's end, counting what this worker handed out
        and, only if that is not enough, what the store holds (other workers' items)."""
        try:
            ends = self.source.high_watermarks(self.items_topic)
        except TransportUnavailableError as exc:
            log.warning("cannot tell whether the catalog is complete (%s); not waiting", exc)
            return {}
        behind = catalog_behind(ends, self.emitted)
        if not behind:
            return behind
        try:
            stored = self.stored_items()
        except StoreUnavailableError:
            return behind  # the worker's own store calls wait the outage out
        self._remember(stored)
        return catalog_behind(ends, self._with_stored(stored))

    def _hold(self, messages: list[RawMessage]) -> None:
        """Keep ``messages`` until the catalog is applied, and stop fetching their
        partitions (every other-topic partition, so none runs ahead)."""
        last: dict[TopicPartition, int] = {}
        for msg in self.pending:
            last[(msg.topic, msg.partition)] = msg.offset
        for msg in messages:
            tp = (msg.topic, msg.partition)
            if msg.offset > last.get(tp, -1):  # fetched before a pause took: already here
                self.pending.append(msg)
                last[tp] = msg.offset
        others = {tp for tp in self.source.assigned if tp[0] != self.items_topic}
        newly = others - self.paused
        if newly:
            self.source.pause(newly)
            self.paused |= newly
        self.stats.waiting = len(self.pending)

    def _caught_up(self) -> bool:
        now = self.clock()
        if now - self._checked_at < self.check_every_s:
            return False
        self._checked_at = now
        assert self.targets is not None
        ends = {p: t + 1 for p, t in self.targets.items()}
        left = catalog_behind(ends, self.emitted)
        if left:
            try:
                stored = self.stored_items()
            except StoreUnavailableError:
                return False
            self._remember(stored)
            left = catalog_behind(ends, self._with_stored(stored))
        waited = now - self._since
        if not left:
            log.info("catalog applied in %.2f s; the other topics go on", waited)
            return True
        if waited >= self.max_wait_s:
            self.stats.timeouts += 1
            log.warning(
                "the catalog is still behind after %.0f s (items partitions %s); going on "
                "without it",
                waited,
                sorted(left),
            )
            return True
        return False

    def _remember(self, stored: Mapping[int, int]) -> None:
        """Keep what the store holds of this worker's own items partitions (nobody else
        writes them), so that the next batches need not ask again. Other workers' are asked
        each time: a store that lost them must hold the other topics back again."""
        assigned = self.source.assigned
        for p, offset in stored.items():
            if (self.items_topic, p) in assigned and offset > self.emitted.get(p, -1):
                self.emitted[p] = offset

    def _with_stored(self, stored: Mapping[int, int]) -> dict[int, int]:
        """Last applied items offset per partition: handed out here, or held by the store."""
        applied = dict(self.emitted)
        for p, offset in stored.items():
            applied[p] = max(applied.get(p, -1), offset)
        return applied

    def _release(self) -> list[RawMessage]:
        """Hand out what waited, and fetch its partitions again."""
        self.stats.waited_s += self.clock() - self._since
        out, self.pending = self.pending, []
        paused, self.paused = self.paused, set()
        self.source.resume(paused & self.source.assigned)
        self.targets = None
        self.stats.waiting = 0
        return out

    def _forget_revoked(self) -> None:
        """Partitions that moved to another worker: it consumes what waited here. A
        partition paused here and assigned again must not stay paused (librdkafka keeps it)."""
        if self.source.generation == self._generation:
            return
        self._generation = self.source.generation
        assigned = self.source.assigned
        if self.pending and any((m.topic, m.partition) not in assigned for m in self.pending):
            self.pending = [m for m in self.pending if (m.topic, m.partition) in assigned]
            self.stats.waiting = len(self.pending)
        self._revoked_paused |= self.paused - assigned
        self.paused &= assigned
        back = (self._revoked_paused & assigned) - self.paused
        if back:
            self.source.resume(back)
        self._revoked_paused -= back
        for p in [p for p in self.emitted if (self.items_topic, p) not in assigned]:
            del self.emitted[p]
