"""Recognising a re-sent event by its id.

Offsets make a redelivered *message* harmless, but a producer that sends the same event again
(a client retrying a POST after a timeout, a replay run twice) makes a new message at a new
offset. So each interactions partition keeps the ids it applied in a sorted set scored by
event time, written in the same atomic commit as the state and the offsets: a crash can
neither remember an id whose event was lost nor forget one whose event counted.

A re-send carries its original event time. A copy counts as a re-send when the partition
applied the id at an event time within ``window_ms`` of the partition's event time at the
copy (its running watermark), whether the first copy came in this batch or an earlier one.
An event accepted later than the window (the allowed lateness can be longer) is not
remembered, so a re-send of it counts again.

A partition's ids are spread over :data:`ID_BUCKETS` sorted sets by a hash of the id. One
set of them all grew past Redis's compact encoding and cost ~100 bytes an id; buckets of up
to 128 ids stay compact at ~20 bytes plus the id. A bucket is trimmed to the window whenever
a batch writes to it; ids it still holds past the window are ignored by the verdict, so
where batches are cut never changes it.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from features.batch import WriteBatch
from features.keys import Keys
from features.store import Store

#: For one partition, the event time (ms) at which each id was applied, None if it was not.
KnownIds = Callable[[int, list[str]], Sequence[float | None]]

#: Sorted sets per partition. Fixed, since it decides where an id is looked up: a
#: partition's window of up to ~8,000 ids stays in the compact encoding.
ID_BUCKETS = 64


def bucket_of(event_id: str) -> int:
    """The bucket of an id: a hash that is the same in every process and run.

    Examples:
        >>> bucket_of("e1"), bucket_of("e1") == bucket_of("e1")
        (39, True)
    """
    return zlib.crc32(event_id.encode()) % ID_BUCKETS


class Candidate(NamedTuple):
    """An interaction to screen: its partition, id, event time, and the partition's event
    time once it was read (the running watermark). A tuple: one is made per interaction,
    and a frozen dataclass costs three times as much to build."""

    partition: int
    event_id: str
    ts: int
    watermark: int


class EventIdFilter:
    """Finds repeated event ids of one topic and records the applied ones.

    Examples:
        >>> from features.stores.memory_store import InMemoryStore
        >>> store, ids = InMemoryStore(), EventIdFilter(Keys("sr"), "clicks", 60_000)
        >>> known = ids.stored_in(store)
        >>> batch = [Candidate(0, "a", 1_000, 1_000), Candidate(0, "b", 2_000, 2_000),
        ...          Candidate(0, "a", 1_000, 2_000)]
        >>> ids.duplicates(batch, known)
        [False, False, True]
        >>> writes = WriteBatch()
        >>> ids.record(writes, {0: {"a": 1_000, "b": 2_000}}, {0: 2_000})
        >>> store.commit(writes)
        >>> again = [Candidate(0, "b", 2_000, 9_000), Candidate(1, "b", 2_000, 9_000)]
        >>> ids.duplicates(again, known)
        [True, False]

        Out of the window, a copy counts again (in any batch):

        >>> ids.duplicates([Candidate(0, "a", 1_000, 70_000)], known)
        [False]
    """

    def __init__(self, keys: Keys, topic: str, window_ms: int) -> None:
        self.keys = keys
        self.topic = topic
        self.window_ms = window_ms

    @property
    def enabled(self) -> bool:
        """False when the window is 0: only offsets deduplicate."""
        return self.window_ms > 0

    def key(self, partition: int, event_id: str) -> str:
        """The sorted set that holds ``event_id`` if ``partition`` applied it recently."""
        return self.keys.event_ids(self.topic, partition, bucket_of(event_id))

    def stored_in(self, store: Store) -> KnownIds:
        """A :data:`KnownIds` that asks the store (one round trip per partition)."""
        return lambda partition, ids: store.zscores_each([(self.key(partition, i), i) for i in ids])

    def duplicates(self, batch: Sequence[Candidate], known: KnownIds) -> list[bool]:
        """For each candidate in offset order: True if its partition applied the id (as
        ``known`` says, or earlier in ``batch``) at an event time within the window of the
        candidate's watermark."""
        if not self.enabled:
            return [False] * len(batch)
        by_partition: dict[int, dict[str, None]] = defaultdict(dict)
        for c in batch:
            by_partition[c.partition][c.event_id] = None
        applied: dict[int, dict[str, float]] = {}
        for partition, unique in by_partition.items():
            members = list(unique)
            found = known(partition, members)
            applied[partition] = {
                m: ts for m, ts in zip(members, found, strict=True) if ts is not None
            }
        flags = []
        for c in batch:
            first = applied[c.partition].get(c.event_id)
            repeated = first is not None and first >= c.watermark - self.window_ms
            flags.append(repeated)
            if not repeated:
                applied[c.partition][c.event_id] = c.ts
        return flags

    def record(
        self,
        batch: WriteBatch,
        applied: Mapping[int, Mapping[str, int]],
        watermarks: Mapping[int, int],
    ) -> None:
        """Write each partition's applied ids (event time ms by id), trimming each bucket
        written to the window behind the partition's watermark."""
        if not self.enabled:
            return
        for partition, ids in applied.items():
            mark = watermarks.get(partition)
            if mark is None:
                continue  # no event time yet: cannot happen for a batch that applied ids
            cutoff = mark - self.window_ms
            buckets: dict[str, dict[str, float]] = defaultdict(dict)
            for event_id, ts in ids.items():
                if ts >= cutoff:
                    buckets[self.key(partition, event_id)][event_id] = float(ts)
            for key in sorted(buckets):
                # Trimmed first: a bucket that passes 128 ids even for a moment keeps the
                # large encoding for good.
                batch.zrem_below(key, cutoff)
                batch.zadd(key, buckets[key])
