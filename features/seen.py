"""Per-user seen and negative sets: bounded, most recent kept, expiring after inactivity.

Bounded sorted sets (item → event time) rather than Bloom filters: they are exact, they give
recency order (co-visitation reads a user's latest items from the seen-set), and at the
default bound Redis keeps small ones in its compact listpack encoding (see the README's
memory figures).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from features.batch import WriteBatch
from features.keys import Keys
from features.store import Store

#: Interaction types that mark an item as unwanted by the user.
NEGATIVE_TYPES = frozenset({"skip", "dismiss"})


class SeenSet:
    """Items each user has interacted with, and those they skipped or dismissed.

    Examples:
        >>> from features.stores.memory_store import InMemoryStore
        >>> seen = SeenSet(Keys("t"), max_items=2, ttl_s=60)
        >>> store, batch = InMemoryStore(), WriteBatch()
        >>> seen.add(batch, "u", {"a": 1, "b": 2, "c": 3}, negatives={"c": 3})
        >>> store.commit(batch)
        >>> seen.mask(store, "u", ["a", "b", "c"])
        [False, True, True]
        >>> seen.negative_mask(store, "u", ["b", "c"])
        [False, True]
    """

    def __init__(self, keys: Keys, *, max_items: int, ttl_s: int) -> None:
        self.keys = keys
        self.max_items = max_items
        self.ttl_s = ttl_s

    def add(
        self,
        batch: WriteBatch,
        user_id: str,
        items_ts_ms: Mapping[str, int],
        negatives: Mapping[str, int] | None = None,
    ) -> None:
        """Queue: remember items (item → event time), drop the oldest, refresh the TTLs."""
        for key, items in (
            (self.keys.seen(user_id), items_ts_ms),
            (self.keys.negatives(user_id), negatives or {}),
        ):
            if items:
                # GT: a late event never moves an item back in the user's history.
                batch.zadd(key, {i: float(ts) for i, ts in items.items()}, greater=True)
                batch.zkeeptop(key, self.max_items)
                batch.expire(key, self.ttl_s)

    def mask(self, store: Store, user_id: str, items: Sequence[str]) -> list[bool]:
        """For each item, whether the user has seen it."""
        return [score is not None for score in store.zscores(self.keys.seen(user_id), items)]

    def negative_mask(self, store: Store, user_id: str, items: Sequence[str]) -> list[bool]:
        """For each item, whether the user skipped or dismissed it."""
        return [s is not None for s in store.zscores(self.keys.negatives(user_id), items)]

    def recent(
        self, store: Store, user_ids: Sequence[str], k: int
    ) -> list[list[tuple[str, float]]]:
        """Each user's ``k`` most recent items with their event times, newest first."""
        return store.top_many([self.keys.seen(u) for u in user_ids], k)
