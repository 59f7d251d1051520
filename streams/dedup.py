"""Recognising a re-sent event by its id.

Offsets make a redelivered *message* harmless, but a producer that sends the same event again
(a client retrying a POST after a timeout, a replay run twice) makes a new message at a new
offset. So each interactions partition keeps the ids it applied in a sorted set scored by
event time, written in the same atomic commit as the state and the offsets: a crash can
neither remember an id whose event was lost nor forget one whose event counted.

A re-send carries its original event time, so its id is found while that time lies within
``window_ms`` of the partition's event time (its watermark); ids that fall out of the window
are trimmed as the watermark moves. An event accepted later than the window (the allowed
lateness can be longer) is not remembered, so a re-send of it would count again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from features.batch import WriteBatch
from features.keys import Keys
from features.store import Store

#: Answers, for one partition, which of the ids it applied before (one flag per id).
KnownIds = Callable[[int, list[str]], Sequence[bool]]


class EventIdFilter:
    """Finds repeated event ids of one topic and records the applied ones.

    Examples:
        >>> from features.stores.memory_store import InMemoryStore
        >>> store, ids = InMemoryStore(), EventIdFilter(Keys("sr"), "clicks", 60_000)
        >>> ids.duplicates([(0, "a"), (0, "b"), (0, "a")], ids.stored_in(store))
        [False, False, True]
        >>> batch = WriteBatch()
        >>> ids.record(batch, {0: {"a": 1_000, "b": 2_000}}, {0: 2_000})
        >>> store.commit(batch)
        >>> ids.duplicates([(0, "b"), (1, "b")], ids.stored_in(store))
        [True, False]
    """

    def __init__(self, keys: Keys, topic: str, window_ms: int) -> None:
        self.keys = keys
        self.topic = topic
        self.window_ms = window_ms

    @property
    def enabled(self) -> bool:
        """False when the window is 0: only offsets deduplicate."""
        return self.window_ms > 0

    def key(self, partition: int) -> str:
        """The sorted set of a partition's recent ids."""
        return self.keys.event_ids(self.topic, partition)

    def stored_in(self, store: Store) -> KnownIds:
        """A :data:`KnownIds` that asks the store (one read per partition)."""

        def known(partition: int, ids: list[str]) -> list[bool]:
            return [score is not None for score in store.zscores(self.key(partition), ids)]

        return known

    def duplicates(self, ids: Sequence[tuple[int, str]], known: KnownIds) -> list[bool]:
        """For each ``(partition, event_id)`` in offset order: True if the partition applied
        that id before (``known``) or it came earlier in ``ids``."""
        if not self.enabled:
            return [False] * len(ids)
        by_partition: dict[int, dict[str, None]] = defaultdict(dict)
        for partition, event_id in ids:
            by_partition[partition][event_id] = None
        applied: dict[int, set[str]] = {}
        for partition, unique in by_partition.items():
            members = list(unique)
            found = known(partition, members)
            applied[partition] = {m for m, was in zip(members, found, strict=True) if was}
        seen: dict[int, set[str]] = defaultdict(set)
        flags = []
        for partition, event_id in ids:
            flags.append(event_id in applied[partition] or event_id in seen[partition])
            seen[partition].add(event_id)
        return flags

    def record(
        self,
        batch: WriteBatch,
        applied: Mapping[int, Mapping[str, int]],
        watermarks: Mapping[int, int],
    ) -> None:
        """Write each partition's applied ids (event time ms by id) and trim the ids that
        fell out of the window behind its watermark."""
        if not self.enabled:
            return
        for partition, ids in applied.items():
            mark = watermarks.get(partition)
            if mark is None:
                continue  # no event time yet: cannot happen for a batch that applied ids
            cutoff = mark - self.window_ms
            key = self.key(partition)
            batch.zadd(key, {i: float(ts) for i, ts in ids.items() if ts >= cutoff})
            batch.zrem_below(key, cutoff)
