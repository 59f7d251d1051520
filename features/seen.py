"""Per-user seen-sets: bounded, most recent kept, expiring after inactivity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from features.batch import WriteBatch
from features.keys import Keys
from features.store import Store


class SeenSet:
    """Items each user has interacted with, as a sorted set scored by event time.

    Examples:
        >>> from features.stores.memory_store import InMemoryStore
        >>> from features.batch import WriteBatch
        >>> seen = SeenSet(Keys("t"), max_items=2, ttl_s=60)
        >>> store, batch = InMemoryStore(), WriteBatch()
        >>> seen.add(batch, "u", {"a": 1, "b": 2, "c": 3})
        >>> store.commit(batch)
        >>> seen.mask(store, "u", ["a", "b", "c"])
        [False, True, True]
    """

    def __init__(self, keys: Keys, *, max_items: int, ttl_s: int) -> None:
        self.keys = keys
        self.max_items = max_items
        self.ttl_s = ttl_s

    def add(self, batch: WriteBatch, user_id: str, items_ts_ms: Mapping[str, int]) -> None:
        """Queue: remember ``items`` (item → event time), drop the oldest, refresh the TTL."""
        if not items_ts_ms:
            return
        key = self.keys.seen(user_id)
        batch.zadd(key, {item: float(ts) for item, ts in items_ts_ms.items()})
        batch.zkeeptop(key, self.max_items)
        batch.expire(key, self.ttl_s)

    def mask(self, store: Store, user_id: str, items: Sequence[str]) -> list[bool]:
        """For each item, whether the user has seen it."""
        return [score is not None for score in store.zscores(self.keys.seen(user_id), items)]
