"""Keeping the log in step with a store that lost effects: Redis restarted with nothing on
disk, or without its last writes. The worker wraps a rewindable source (Kafka's) in a
:class:`RecoveringSource`, which rewinds the partitions whose effects are gone and replays
them, the catalog first."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Protocol, runtime_checkable

from features.errors import StoreUnavailableError, TransportUnavailableError
from streams.transport import RawMessage, TopicPartition

log = logging.getLogger(__name__)


#: Longest the other partitions wait for the catalog to be applied again after a loss: past
#: it they go on (logged), rather than stall the stream on an items partition nobody applies.
CATALOG_WAIT_MAX_S = 120.0


@runtime_checkable
class Rewindable(Protocol):
    """A :class:`MessageSource` that can also consume partitions again (Kafka's can)."""

    generation: int
    assigned: set[TopicPartition]

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[RawMessage]: ...
    def commit(self, next_offsets: Mapping[TopicPartition, int]) -> None: ...
    def lag(self) -> dict[TopicPartition, int]: ...
    def close(self) -> None: ...
    def committed(self, tps: Collection[TopicPartition]) -> dict[TopicPartition, int]: ...
    def rewind(self, tp: TopicPartition, offset: int | None) -> None: ...
    def pause(self, tps: Collection[TopicPartition]) -> None: ...
    def resume(self, tps: Collection[TopicPartition]) -> None: ...
    def end_offsets(self, topic: str) -> dict[int, tuple[int, int]]: ...


class RecoveringSource:
    """A message source that keeps the log in step with the store's offset table.

    The table says what is applied, and Kafka's committed offsets only ever follow it (a
    batch is committed to Kafka after its state is in the store). So a table that holds less
    than this worker applied, or than its group committed, means that the store lost effects:
    Redis came back with nothing on disk, or without its last writes. Each such partition is
    rewound to the table (to the log's beginning when nothing is left) and replayed; the
    exactly-once guard is untouched, as the replay starts right after what the store holds.
    When the catalog (the items topic) is behind as well, the other partitions pause until it
    is applied again, as it was the first time round, because interactions read the
    categories and vectors of their items.

    The table is checked in the checkpoint the worker reads before each synchronous batch
    (:meth:`reconcile`), against the group's committed offsets whenever partitions are
    assigned, and every ``check_every_s`` (an idle worker notices a wipe too).
    """

    def __init__(
        self,
        source: Rewindable,
        *,
        read_offsets: Callable[[list[str]], dict[TopicPartition, int]],
        inputs: list[str],
        items_topic: str,
        check_every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.read_offsets = read_offsets
        self.inputs = inputs
        self.items_topic = items_topic
        self.check_every_s = check_every_s
        self.clock = clock
        #: Offsets the store is known to hold: this worker's commits, the group's.
        self.applied: dict[TopicPartition, int] = {}
        #: Rewound since the last poll: messages the worker still holds of them are void.
        self.stale: set[TopicPartition] = set()
        #: Paused until the catalog is applied again (``catalog_targets``).
        self.held: set[TopicPartition] = set()
        self.catalog_targets: dict[int, int] | None = None
        self.rewinds = 0
        self._held_since = 0.0
        self._release_checked_at = float("-inf")
        self._checked_generation: int | None = None
        self._checked_at = float("-inf")

    # --- the MessageSource the worker sees ---------------------------------------------------

    @property
    def generation(self) -> int:
        """The wrapped source's."""
        return self.source.generation

    @generation.setter
    def generation(self, value: int) -> None:
        self.source.generation = value

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[RawMessage]:
        """The next batch, less what must wait or be consumed again."""
        messages = self.source.poll_batch(max_messages, timeout_s)
        # Fetched after every earlier rewind: nothing the worker holds from now on is stale,
        # except what a rewind below makes so.
        self.stale.clear()
        self._maybe_check()
        self._maybe_release()
        return self._screen(messages)

    def commit(self, next_offsets: Mapping[TopicPartition, int]) -> None:
        """Commit to Kafka what the store now holds (and remember it)."""
        fresh = {tp: o for tp, o in next_offsets.items() if tp not in self.stale}
        for tp, offset in fresh.items():
            if offset - 1 > self.applied.get(tp, -1):
                self.applied[tp] = offset - 1
        self.source.commit(fresh)

    def lag(self) -> dict[TopicPartition, int]:
        """The wrapped source's."""
        return self.source.lag()

    def close(self) -> None:
        """Close the wrapped source."""
        self.source.close()

    # --- what the worker calls ----------------------------------------------------------------

    def reconcile(
        self, stored: Mapping[TopicPartition, int], messages: list[RawMessage]
    ) -> list[RawMessage]:
        """Given the checkpoint just read (every input topic), rewind what the store lost and
        return the messages still to apply."""
        lost = self._lost(stored)
        if lost:
            self._rewind(lost, stored)
        return self._keep(messages)

    def recheck(self) -> None:
        """Check the table at the next poll (the store was unreachable)."""
        self._checked_at = float("-inf")

    # --- internals ------------------------------------------------------------------------------

    def _keep(self, messages: list[RawMessage]) -> list[RawMessage]:
        skip = self.stale | self.held
        if not skip:
            return messages
        return [m for m in messages if (m.topic, m.partition) not in skip]

    def _lost(self, stored: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Assigned partitions whose stored offset is below what is known to be applied."""
        assigned = self.source.assigned
        return {
            tp: known
            for tp, known in self.applied.items()
            if tp in assigned and stored.get(tp, -1) < known
        }

    def _maybe_check(self) -> None:
        generation = self.source.generation
        now = self.clock()
        assigned_anew = generation != self._checked_generation
        if not assigned_anew and now - self._checked_at < self.check_every_s:
            return
        try:
            if assigned_anew:
                for tp, offset in self.source.committed(self.source.assigned).items():
                    self.applied[tp] = max(self.applied.get(tp, -1), offset - 1)
            stored = self.read_offsets(self.inputs)
        except (StoreUnavailableError, TransportUnavailableError):
            return  # checked at a later poll
        self._checked_generation, self._checked_at = generation, now
        lost = self._lost(stored)
        if lost:
            self._rewind(lost, stored)

    def _rewind(
        self, lost: Mapping[TopicPartition, int], stored: Mapping[TopicPartition, int]
    ) -> None:
        rewound = [tp for tp in sorted(lost) if self._seek(tp, stored.get(tp))]
        self.rewinds += 1
        shown = ", ".join(
            f"{t}/{p} {stored.get((t, p), 'nothing')} < {lost[(t, p)]}" for t, p in rewound[:3]
        )
        log.warning(
            "the store holds less than was applied (%s%s): replaying %d partition(s) from the "
            "log, from the store's checkpoint on",
            shown,
            ", …" if len(rewound) > 3 else "",
            len(rewound),
        )
        if self.catalog_targets is None:
            self._hold_for_catalog(stored)

    def _seek(self, tp: TopicPartition, stored: int | None) -> bool:
        """Consume ``tp`` again right after ``stored``; the messages held of it are void."""
        self.stale.add(tp)
        try:
            self.source.rewind(tp, None if stored is None else stored + 1)
        except TransportUnavailableError as exc:
            # Its messages stay void and the loss stays known: the next check tries again.
            log.warning("could not rewind %s/%d (%s); retrying", tp[0], tp[1], exc)
            return False
        self.applied[tp] = -1 if stored is None else stored
        return True

    def _hold_for_catalog(self, stored: Mapping[TopicPartition, int]) -> None:
        """Pause every other partition while the store's catalog is behind the items topic."""
        try:
            ends = self.source.end_offsets(self.items_topic)
        except TransportUnavailableError as exc:
            log.warning("cannot tell whether the catalog is complete (%s); not waiting", exc)
            return
        targets = {
            p: high - 1
            for p, (low, high) in ends.items()
            if high > low and stored.get((self.items_topic, p), -1) < high - 1
        }
        if not targets:
            return
        others = {tp for tp in self.source.assigned if tp[0] != self.items_topic}
        for tp in sorted(others - self.stale):
            self._seek(tp, stored.get(tp))  # what the worker holds of them waits too
        self.source.pause(others)
        self.held |= others
        self.catalog_targets = targets
        self._held_since = self.clock()
        log.warning(
            "the catalog is behind too: %d partition(s) wait until %d items partition(s) are "
            "applied again",
            len(others),
            len(targets),
        )

    def _maybe_release(self) -> None:
        if self.catalog_targets is None:
            return
        now = self.clock()
        if now - self._release_checked_at < 0.2:
            return
        self._release_checked_at = now
        try:
            stored = self.read_offsets([self.items_topic])
        except StoreUnavailableError:
            return
        behind = sorted(
            p
            for p, target in self.catalog_targets.items()
            if stored.get((self.items_topic, p), -1) < target
        )
        waited = now - self._held_since
        if behind and waited < CATALOG_WAIT_MAX_S:
            return
        if behind:
            log.warning(
                "the catalog is still behind after %.0f s (items partitions %s); going on",
                waited,
                behind,
            )
        else:
            log.info("catalog applied again in %.1f s; replaying the other partitions", waited)
        self.source.resume(self.held)
        self.held.clear()
        self.catalog_targets = None

    def _screen(self, messages: list[RawMessage]) -> list[RawMessage]:
        """Messages of partitions that must wait for the catalog go back to the log."""
        if self.catalog_targets is not None and messages:
            first: dict[TopicPartition, int] = {}
            for msg in messages:
                tp = (msg.topic, msg.partition)
                if tp[0] != self.items_topic and tp not in self.stale:
                    first[tp] = min(msg.offset, first.get(tp, msg.offset))
            waiting: set[TopicPartition] = set()
            for tp, offset in first.items():
                # Newly assigned, or fetched before the pause took: consume them again later.
                try:
                    self.source.rewind(tp, offset)
                except TransportUnavailableError:
                    continue  # then they are applied now: out of order beats lost
                waiting.add(tp)
            self.source.pause(waiting)
            self.stale |= waiting
            self.held |= waiting
        return self._keep(messages)
