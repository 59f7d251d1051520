"""What a worker already knows about the state it writes, so that the next batch can be
computed while Redis is still applying the previous one.

Everything here is what the store *will* hold once the commits already sent have landed.
A worker owns its users (interactions are keyed by user), so their recent items and
embedding states only change through its own batches; item lookups can change through
another worker's batches and so expire after a few seconds. The runtime clears the whole
cache when its partitions change hands or a commit fails.

Reads fill the cache (:class:`streams.worker.processors.BatchReads`); writes reach it only through
:meth:`StateCache.absorb`, from the batch about to be committed, so that what it holds is
what the store will hold, whatever the processors do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from features.batch import (
    Delete,
    Expire,
    HSet,
    Op,
    SetBytes,
    WriteBatch,
    ZAdd,
    ZKeepTop,
    ZRemBelow,
    ZScalePrefix,
)
from features.keys import Keys
from streams.io.transport import TopicPartition

#: A user's latest seen items (item, event time ms), newest first, as ``store.top`` reads
#: them, with how many were asked for.
Recent = tuple[int, list[tuple[str, float]]]

#: Entries kept per table before it is started over (a miss only costs a read).
MAX_ENTRIES = 200_000


class StateCache:
    """Per-worker tables of state this worker has read or written."""

    def __init__(
        self, item_ttl_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.item_ttl_s = item_ttl_s
        self.clock = clock
        self.clear()

    def clear(self) -> None:
        """Forget everything (partitions moved, or a commit failed)."""
        self.offsets: dict[TopicPartition, int] = {}
        self.watermarks: dict[TopicPartition, int] = {}
        self.landmarks: dict[str, str] | None = None
        #: By seen-set key.
        self.recent: dict[str, Recent] = {}
        #: Embedding states by key; None: the key holds nothing.
        self.states: dict[str, bytes | None] = {}
        #: Keys a commit in flight changes in a way the cache cannot follow: read them only
        #: once it has landed.
        self.unknown: set[str] = set()
        self._items: dict[tuple[str, str], tuple[float, Any]] = {}

    def put(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        """Set an entry. Tables are trimmed only by :meth:`trim`, between commits: dropping an
        entry a commit in flight wrote would make the next batch read the store too early."""
        table[key] = value

    @property
    def oversized(self) -> bool:
        """True once a table holds more than :data:`MAX_ENTRIES`."""
        return any(len(t) > MAX_ENTRIES for t in (self.recent, self.states, self._items))

    def trim(self) -> None:
        """Start the oversized tables over (call only with no commit in flight)."""
        for table in (self.recent, self.states, self._items):
            if len(table) > MAX_ENTRIES:
                table.clear()
        self.unknown.clear()  # nothing in flight: the store holds it all

    def absorb(self, batch: WriteBatch, keys: Keys) -> None:
        """Take in what ``batch`` writes of the cached state (call once it is computed)."""
        families = _Families(keys)
        for op in batch:
            if isinstance(op, ZScalePrefix | Expire):
                continue  # co-visitation's rotation, and times to live: nothing cached
            key = op.key
            if key.startswith(families.seen):
                self._absorb_seen(op, key)
            elif key.startswith(families.states):
                self._absorb_state(op, key)
            elif isinstance(op, HSet):
                self._absorb_fields(op, families)
            elif key.startswith(families.vectors):
                if isinstance(op, SetBytes):
                    vector = np.frombuffer(op.value, dtype=np.float32)
                    self.put_item("vector", key[len(families.vectors) :], vector)
                elif isinstance(op, Delete):
                    self.put_item("vector", key[len(families.vectors) :], None)

    def _absorb_fields(self, op: HSet, families: _Families) -> None:
        fields = op.fields
        if op.key == families.landmarks:
            if self.landmarks is not None:
                self.landmarks.update(fields)
        elif op.key.startswith(families.offsets):
            topic = op.key[len(families.offsets) :]
            for partition, offset in fields.items():
                self.offsets[(topic, int(partition))] = int(offset)
        elif op.key.startswith(families.watermarks):
            topic = op.key[len(families.watermarks) :]
            for partition, mark in fields.items():
                self.watermarks[(topic, int(partition))] = int(mark)
        elif op.key.startswith(families.items) and "category" in fields:
            self.put_item("category", op.key[len(families.items) :], fields["category"])

    def _absorb_seen(self, op: Op, key: str) -> None:
        cached = self.recent.get(key)
        if isinstance(op, Delete):
            if cached is not None:
                self.recent[key] = (cached[0], [])
            self.unknown.discard(key)
            return
        if cached is None or key in self.unknown:
            if not isinstance(op, ZKeepTop | ZRemBelow):
                self.unknown.add(key)
            return
        k, rows = cached
        if isinstance(op, ZAdd) and op.greater:
            self.recent[key] = (k, _merged_greater(rows, op.scores, k))
        elif isinstance(op, ZKeepTop):
            self.recent[key] = (k, rows[: op.keep])
        elif isinstance(op, ZRemBelow):
            self.recent[key] = (k, [(i, ts) for i, ts in rows if ts >= op.score])
        else:
            self.unknown.add(key)

    def _absorb_state(self, op: Op, key: str) -> None:
        if isinstance(op, SetBytes):
            self.states[key] = op.value
            self.unknown.discard(key)
        elif isinstance(op, Delete):
            self.states[key] = None
            self.unknown.discard(key)
        else:
            self.unknown.add(key)

    def item(self, kind: str, item_id: str) -> tuple[bool, Any]:
        """(hit, value) of an item lookup of ``kind`` that has not expired."""
        entry = self._items.get((kind, item_id))
        if entry is None or entry[0] < self.clock():
            return False, None
        return True, entry[1]

    def put_item(self, kind: str, item_id: str, value: Any) -> None:
        """Remember an item lookup for ``item_ttl_s``."""
        self.put(self._items, (kind, item_id), (self.clock() + self.item_ttl_s, value))


class _Families:
    """The key prefixes of the state the cache holds."""

    def __init__(self, keys: Keys) -> None:
        self.seen = keys.seen("")
        self.states = (keys.session_embedding(""), keys.user_embedding(""))
        self.vectors = keys.item_embedding("")
        self.items = keys.item("")
        self.offsets = keys.applied_offsets("")
        self.watermarks = keys.watermarks("")
        self.landmarks = keys.landmarks()


def _merged_greater(
    rows: list[tuple[str, float]], scores: Mapping[str, float], k: int
) -> list[tuple[str, float]]:
    """A sorted set's top ``k`` after ZADD GT, from its top ``k`` before: a member below
    the top keeps a lower score than any in it, so it cannot climb in on a lower new one.

    Examples:
        >>> _merged_greater([("a", 3.0), ("b", 1.0)], {"b": 2.0, "c": 5.0}, 2)
        [('c', 5.0), ('a', 3.0)]
    """
    merged = dict(rows)
    for member, score in scores.items():
        merged[member] = max(score, merged.get(member, score))
    # Ties as Redis reads a sorted set backwards: by member, descending.
    ordered = sorted(merged.items(), key=lambda row: (row[1], row[0]), reverse=True)
    return ordered[:k]
