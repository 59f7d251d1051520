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
from features.landmarks import Ranked

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
        >>> items = ["a", "b", "c"]
        >>> sorted(seen.members(items, store.zscores(Keys("t").seen("u"), items)))
        ['b', 'c']
        >>> sorted(seen.members(items, store.zscores(Keys("t").negatives("u"), items)))
        ['c']
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

    @staticmethod
    def members(items: Sequence[str], scores: Sequence[float | None]) -> set[str]:
        """Of ``items``, those a set holds, given its scores of them as read (``zscores``)."""
        return {item for item, score in zip(items, scores, strict=True) if score is not None}

    @staticmethod
    def recent_negatives(recent: Ranked, negatives: Ranked) -> frozenset[str]:
        """Of a user's recent items (their seen-set's top), those skipped or dismissed."""
        recent_ids = {item for item, _ in recent}
        return frozenset(item for item, _ in negatives if item in recent_ids)
