"""The pipelined worker's cache holds what the store will hold once the batch lands: it
learns writes only from the batch itself, and marks what it cannot follow."""

from __future__ import annotations

import numpy as np

from features.batch import WriteBatch
from features.keys import Keys
from features.stores.memory_store import InMemoryStore
from streams.worker.processors import BatchReads, EventBatch
from streams.worker.state_cache import StateCache

KEYS = Keys("sr")
K = 3


def reads_of(store: InMemoryStore, cache: StateCache, barriers: list[int]) -> BatchReads:
    return BatchReads(EventBatch(), store, KEYS, 4, cache=cache, barrier=lambda: barriers.append(1))


def test_a_seen_set_s_top_after_the_batch_is_the_store_s() -> None:
    store, cache = InMemoryStore(), StateCache()
    barriers: list[int] = []
    seed = WriteBatch()
    seed.zadd(KEYS.seen("u"), {"a": 5.0, "b": 3.0, "c": 1.0, "d": 0.5})
    store.commit(seed)
    assert reads_of(store, cache, barriers).recent(["u"], K)["u"] == [
        ("a", 5.0),
        ("b", 3.0),
        ("c", 1.0),
    ]
    batch = WriteBatch()
    # "d" rises into the top; "a" does not move back (GT); "e" ties "b" (ties by member).
    batch.zadd(KEYS.seen("u"), {"d": 4.0, "a": 2.0, "e": 3.0}, greater=True)
    batch.zkeeptop(KEYS.seen("u"), 10)
    batch.expire(KEYS.seen("u"), 60)
    cache.absorb(batch, KEYS)
    store.commit(batch)
    assert cache.recent[KEYS.seen("u")] == (K, store.top(KEYS.seen("u"), K))
    assert reads_of(store, cache, barriers).recent(["u"], K)["u"] == store.top(KEYS.seen("u"), K)
    assert barriers == []


def test_a_write_the_cache_cannot_follow_is_read_after_the_commit_in_flight() -> None:
    store, cache = InMemoryStore(), StateCache()
    barriers: list[int] = []
    batch = WriteBatch()
    batch.zadd(KEYS.seen("never-read"), {"a": 1.0}, greater=True)
    cache.absorb(batch, KEYS)
    assert KEYS.seen("never-read") in cache.unknown
    reads_of(store, cache, barriers).recent(["never-read"], K)
    assert barriers == [1]
    assert KEYS.seen("never-read") not in cache.unknown  # read once landed: known again


def test_checkpoint_landmarks_states_and_items_come_from_the_batch() -> None:
    cache = StateCache()
    cache.landmarks = {"trending": "1"}
    vector = np.arange(4, dtype=np.float32)
    batch = WriteBatch()
    batch.hset(KEYS.applied_offsets("clicks"), {"2": "41"})
    batch.hset(KEYS.watermarks("clicks"), {"2": "9000"})
    batch.hset(KEYS.landmarks(), {"covisitation": "7"})
    batch.set_bytes(KEYS.session_embedding("u"), b"state", ttl_s=60)
    batch.delete(KEYS.user_embedding("u"))
    batch.set_bytes(KEYS.item_embedding("i"), vector.tobytes())
    batch.hset(KEYS.item("i"), {"category": "news", "stub": "0"})
    cache.absorb(batch, KEYS)
    assert cache.offsets == {("clicks", 2): 41}
    assert cache.watermarks == {("clicks", 2): 9000}
    assert cache.landmarks == {"trending": "1", "covisitation": "7"}
    assert cache.states == {KEYS.session_embedding("u"): b"state", KEYS.user_embedding("u"): None}
    hit, cached = cache.item("vector", "i")
    assert hit and np.array_equal(cached, vector)
    assert cache.item("category", "i") == (True, "news")
    assert not cache.unknown
