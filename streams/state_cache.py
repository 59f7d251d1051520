"""What a worker already knows about the state it writes, so that the next batch can be
computed while Redis is still applying the previous one.

Everything here is what the store *will* hold once the commits already sent have landed.
A worker owns its users (interactions are keyed by user), so their recent items and
embedding states only change through its own batches; item lookups can change through
another worker's batches and so expire after a few seconds. The runtime clears the whole
cache when its partitions change hands or a commit fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from streams.transport import TopicPartition

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
        self.recent: dict[str, list[tuple[str, float]]] = {}
        self.states: dict[str, bytes | None] = {}
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

    def item(self, kind: str, item_id: str) -> tuple[bool, Any]:
        """(hit, value) of an item lookup of ``kind`` that has not expired."""
        entry = self._items.get((kind, item_id))
        if entry is None or entry[0] < self.clock():
            return False, None
        return True, entry[1]

    def put_item(self, kind: str, item_id: str, value: Any) -> None:
        """Remember an item lookup for ``item_ttl_s``."""
        self.put(self._items, (kind, item_id), (self.clock() + self.item_ttl_s, value))
