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
from streams.io.transport import RawMessage, TopicPartition

log = logging.getLogger(__name__)


@runtime_checkable
class Rewindable(Protocol):
    """A :class:`MessageSource` that can also consume partitions again (Kafka's can)."""

    generation: int

    @property
    def assigned(self) -> set[TopicPartition]: ...

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[RawMessage]: ...
    def commit(self, next_offsets: Mapping[TopicPartition, int]) -> None: ...
    def lag(self) -> dict[TopicPartition, int]: ...
    def close(self) -> None: ...
    def committed(self, tps: Collection[TopicPartition]) -> dict[TopicPartition, int]: ...
    def rewind(self, tp: TopicPartition, offset: int | None) -> None: ...
    def pause(self, tps: Collection[TopicPartition]) -> None: ...
    def resume(self, tps: Collection[TopicPartition]) -> None: ...
    def high_watermarks(self, topic: str) -> dict[int, int]: ...


class RecoveringSource:
    """A message source that keeps the log in step with the store's offset table.

    The table says what is applied, and Kafka's committed offsets only ever follow it (a
    batch is committed to Kafka after its state is in the store). So a table that holds less
    than this worker applied, or than its group committed, means that the store lost effects:
    Redis came back with nothing on disk, or without its last writes. Each such partition is
    rewound to the table (to the log's beginning when nothing is left) and replayed; the
    exactly-once guard is untouched, as the replay starts right after what the store holds.
    When the catalog (the items topic) is rewound as well, what the worker holds of the other
    topics is consumed again, so that the catalog gate (:mod:`streams.worker.catalog_gate`) puts it
    behind the catalog, as it was the first time round.

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
        self.rewinds = 0
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
        return self._keep(messages)

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
        if not self.stale:
            return messages
        return [m for m in messages if (m.topic, m.partition) not in self.stale]

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
        if any(tp[0] == self.items_topic for tp in rewound):
            # What the worker holds of the other topics must not be applied before the
            # catalog again: consume it again, behind the catalog (streams.worker.catalog_gate).
            others = {tp for tp in self.source.assigned if tp[0] != self.items_topic}
            for tp in sorted(others - self.stale):
                self._seek(tp, stored.get(tp))

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
