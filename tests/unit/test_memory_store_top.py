"""The in-memory store's lazy max-heap for large sorted sets orders exactly as Redis does."""

from __future__ import annotations

import random

from features.batch import WriteBatch
from features.stores.memory_store import InMemoryStore


def _expected(zset: dict[str, float], k: int) -> list[tuple[str, float]]:
    # ZREVRANGE: score descending, equal scores by member bytes descending.
    return sorted(zset.items(), key=lambda p: (p[1], p[0].encode()), reverse=True)[:k]


def test_top_of_a_large_set_matches_redis_order_through_increments_removals_and_ties() -> None:
    rng = random.Random(3)
    store, truth = InMemoryStore(), {}
    members = [f"i{n}" for n in range(1500)] + ["a", "ab", "b", "i1x"]
    for step in range(300):
        batch = WriteBatch()
        for member in rng.sample(members, 20):
            amount = float(rng.randint(1, 3))  # integers: many equal scores
            batch.zincrby("pop", member, amount)
            truth[member] = truth.get(member, 0.0) + amount
        if step % 7 == 0:
            gone = rng.sample(sorted(truth), 5)
            batch.zrem("pop", gone)
            for member in gone:
                truth.pop(member)
        store.commit(batch)
        k = rng.choice([1, 10, 50, 200])
        assert store.top("pop", k) == _expected(truth, k)
