"""One contract suite for every Store: the in-memory one and Redis must agree exactly."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from features.batch import WriteBatch
from features.keys import Keys
from features.sharding import ShardLayout
from features.store import Store
from features.stores.memory_store import InMemoryStore
from features.stores.sharded_store import ShardedStore


@pytest.fixture(params=["memory", "memory-sharded", "redis", "redis-cluster", "redis-sharded"])
def store(request: pytest.FixtureRequest, namespace: str) -> Iterator[Store]:
    """Each store, and a namespace split into shards (in memory, and on the 3-master
    cluster): logical keys in, the same answers out."""
    if request.param == "memory":
        yield InMemoryStore()
    elif request.param == "memory-sharded":
        yield ShardedStore(InMemoryStore(), ShardLayout(namespace, 4))
    elif request.param == "redis":
        yield request.getfixturevalue("redis_store")
    elif request.param == "redis-cluster":
        yield request.getfixturevalue("redis_cluster_store")
    else:
        yield ShardedStore(
            request.getfixturevalue("redis_cluster_store"), ShardLayout(namespace, 6)
        )


@pytest.fixture
def keys(namespace: str) -> Keys:
    return Keys(namespace)


def commit(store: Store, build: object) -> None:
    batch = WriteBatch()
    build(batch)  # type: ignore[operator]
    store.commit(batch)


def test_is_a_store(store: Store) -> None:
    assert isinstance(store, Store)
    assert store.ping()


def test_incr_merges_and_ranks_with_redis_tie_order(store: Store, keys: Keys) -> None:
    k = keys.trending(60.0)

    def build(b: WriteBatch) -> None:
        b.zincrby(k, "a", 1.0)
        b.zincrby(k, "b", 2.0)
        b.zincrby(k, "a", 1.0)
        b.zincrby(k, "c", 2.0)

    commit(store, build)
    # Equal scores come out in descending member order, as ZREVRANGE gives them.
    assert store.top(k, 10) == [("c", 2.0), ("b", 2.0), ("a", 2.0)]
    assert store.top(k, 1) == [("c", 2.0)]
    assert store.top(k, 0) == []
    assert store.zcard(k) == 3
    assert store.zscores(k, ["a", "zz"]) == [2.0, None]


def test_scale_multiplies_every_score(store: Store, keys: Keys) -> None:
    k = keys.trending(1.0)
    commit(store, lambda b: b.zadd(k, {"a": 2.0, "b": 8.0}))
    commit(store, lambda b: b.zscale(k, 0.25))
    assert store.top(k, 5) == [("b", 2.0), ("a", 0.5)]


def test_scale_prefix_multiplies_every_sorted_set_under_it_and_nothing_else(
    store: Store, keys: Keys
) -> None:
    rows = [keys.covisitation(i) for i in ("a", "b[1]", "c*")]
    other = keys.trending(3600.0)

    def fill(b: WriteBatch) -> None:
        for n, row in enumerate(rows):
            b.zincrby(row, "x", 2.0 + n)
        b.zincrby(other, "x", 2.0)
        b.hset(keys.covisitation_prefix() + "not-a-zset", {"f": "v"})

    commit(store, fill)
    # Increments queued before and after the rescale must not merge across it.
    commit(
        store,
        lambda b: (
            b.zincrby(rows[0], "y", 1.0),
            b.zscale_prefix(keys.covisitation_prefix(), 0.5),
            b.zincrby(rows[0], "y", 1.0),
        ),
    )
    assert [dict(store.top(r, 5)) for r in rows] == [{"x": 1.0, "y": 1.5}, {"x": 1.5}, {"x": 2.0}]
    assert store.top(other, 5) == [("x", 2.0)]
    assert store.hgetall(keys.covisitation_prefix() + "not-a-zset") == {"f": "v"}


def test_keep_top_drops_the_lowest(store: Store, keys: Keys) -> None:
    k = keys.seen("u")
    commit(store, lambda b: b.zadd(k, {"a": 1.0, "b": 3.0, "c": 2.0, "d": 4.0}))
    commit(store, lambda b: b.zkeeptop(k, 2))
    assert store.top(k, 10) == [("d", 4.0), ("b", 3.0)]
    commit(store, lambda b: b.zrem(k, ["d", "nope"]))
    assert store.top(k, 10) == [("b", 3.0)]


def test_hashes_values_and_deletes(store: Store, keys: Keys) -> None:
    commit(store, lambda b: b.hset(keys.item("i1"), {"available": "1", "category": "news"}))
    commit(store, lambda b: b.hset(keys.item("i1"), {"available": "0"}))
    assert store.hgetall(keys.item("i1")) == {"available": "0", "category": "news"}
    assert store.hget_many([keys.item("i1"), keys.item("nope")], "available") == ["0", None]
    assert store.hgetall(keys.item("nope")) == {}
    blob = keys.item("blob")
    commit(store, lambda b: b.set_bytes(blob, b"\x00\x01"))
    assert store.get_bytes([blob, keys.item("none")]) == [b"\x00\x01", None]
    commit(store, lambda b: b.delete(blob))
    assert store.get_bytes([blob]) == [None]


def test_expire_sets_a_ttl_and_removes_the_key(store: Store, keys: Keys) -> None:
    k = keys.seen("ttl")
    commit(store, lambda b: b.zadd(k, {"a": 1.0}))
    assert store.ttl(k) is None
    commit(store, lambda b: b.expire(k, 100))
    assert 99 <= (store.ttl(k) or 0) <= 100
    commit(store, lambda b: b.expire(k, 1))
    time.sleep(1.2)
    assert store.zcard(k) == 0
    assert store.ttl(k) is None


def test_commit_is_ordered(store: Store, keys: Keys) -> None:
    k = keys.trending(2.0)

    def build(b: WriteBatch) -> None:
        b.zincrby(k, "a", 4.0)
        b.zscale(k, 0.5)
        b.zincrby(k, "a", 1.0)  # must not merge into the increment before the scale

    commit(store, build)
    assert store.zscores(k, ["a"]) == [3.0]


def test_zadd_greater_only_raises_scores(store: Store, keys: Keys) -> None:
    k = keys.seen("gt")
    commit(store, lambda b: b.zadd(k, {"a": 5.0, "b": 5.0}))
    commit(store, lambda b: b.zadd(k, {"a": 3.0, "b": 9.0, "c": 1.0}, greater=True))
    assert store.zscores(k, ["a", "b", "c"]) == [5.0, 9.0, 1.0]


def test_hsetnx_keeps_existing_fields(store: Store, keys: Keys) -> None:
    k = keys.item("stub")
    commit(store, lambda b: b.hset(k, {"category": "news"}))
    commit(store, lambda b: b.hsetnx(k, {"category": "", "stub": "1"}))
    assert store.hgetall(k) == {"category": "news", "stub": "1"}


def test_guards_make_a_stale_batch_write_nothing(store: Store, keys: Keys) -> None:
    from features.errors import ConflictError

    marks, pop = keys.landmarks(), keys.trending(5.0)
    commit(store, lambda b: b.hset(marks, {"f": "1"}))

    def stale(b: WriteBatch) -> None:
        b.guard(marks, "f", "0")
        b.zincrby(pop, "a", 1.0)

    with pytest.raises(ConflictError):
        commit(store, stale)
    assert store.zcard(pop) == 0

    def fresh(b: WriteBatch) -> None:
        b.guard(marks, "f", "1")
        b.guard(marks, "unset", None)
        b.zincrby(pop, "a", 1.0)

    commit(store, fresh)
    assert store.zcard(pop) == 1


def test_top_many_and_dump(store: Store, keys: Keys) -> None:
    a, b_, empty = keys.seen("a"), keys.seen("b"), keys.seen("none")
    commit(store, lambda b: b.zadd(a, {"x": 1.0, "y": 2.0}))
    commit(store, lambda b: b.zadd(b_, {"z": 3.0}))
    commit(store, lambda b: b.set_bytes(keys.item_embedding("x"), b"\x01\x02"))
    commit(store, lambda b: b.hset(keys.item("x"), {"category": "c"}))
    assert store.top_many([a, b_, empty], 1) == [[("y", 2.0)], [("z", 3.0)], []]
    assert store.dump(keys.prefix) == {
        a: {"x": 1.0, "y": 2.0},
        b_: {"z": 3.0},
        keys.item_embedding("x"): b"\x01\x02",
        keys.item("x"): {"category": "c"},
    }


def test_values_and_tops_read_together(store: Store, keys: Keys) -> None:
    commit(store, lambda b: b.set_bytes(keys.session_embedding("a"), b"\x00\x01"))
    commit(store, lambda b: b.zadd(keys.seen("a"), {"x": 1.0, "y": 2.0, "z": 3.0}))
    values, tops = store.values_and_tops(
        [keys.session_embedding("a"), keys.user_embedding("a")], [keys.seen("a"), keys.seen("b")], 2
    )
    assert values == [b"\x00\x01", None]
    assert tops == [[("z", 3.0), ("y", 2.0)], []]


def test_zscores_many_reads_several_keys_at_once(store: Store, keys: Keys) -> None:
    a, b_ = keys.seen("a"), keys.negatives("a")
    commit(store, lambda b: b.zadd(a, {"x": 1.5, "y": 2.0}))
    commit(store, lambda b: b.zadd(b_, {"y": 3.0}))
    assert store.zscores_many([a, b_, keys.seen("none")], ["y", "x", "z"]) == [
        [2.0, 1.5, None],
        [3.0, None, None],
        [None, None, None],
    ]
    assert store.zscores_many([a], []) == [[]]
    many = [f"m{n}" for n in range(9000)] + ["x"]
    assert store.zscores_many([a], many)[0][-2:] == [None, 1.5]


def test_lowest_reads_due_members_in_score_order(store: Store, keys: Keys) -> None:
    due = keys.impressions_due(0)
    commit(store, lambda b: b.zadd(due, {"c": 30.0, "a": 10.0, "b": 10.0, "d": 40.0}))
    assert store.lowest(due, 30.0, 10) == [("a", 10.0), ("b", 10.0), ("c", 30.0)]
    assert store.lowest(due, 30.0, 2) == [("a", 10.0), ("b", 10.0)]
    assert store.lowest(due, 5.0, 10) == []
    assert store.lowest(keys.impressions_due(9), 100.0, 10) == []


def test_lowest_follows_rescores_and_removals(store: Store, keys: Keys) -> None:
    due = keys.impressions_due(1)
    commit(store, lambda b: b.zadd(due, {"a": 10.0, "b": 20.0}))
    assert store.lowest(due, 100.0, 10) == [("a", 10.0), ("b", 20.0)]
    commit(store, lambda b: b.zadd(due, {"a": 30.0}))
    commit(store, lambda b: b.zrem(due, ["b"]))
    commit(store, lambda b: b.zincrby(due, "c", 5.0))
    assert store.lowest(due, 100.0, 10) == [("c", 5.0), ("a", 30.0)]
    assert store.lowest(due, 20.0, 10) == [("c", 5.0)]
    commit(store, lambda b: b.zadd(due, {"a": 10.0}))
    assert store.lowest(due, 100.0, 1) == [("c", 5.0)]
    assert store.lowest(due, 100.0, 5) == [("c", 5.0), ("a", 10.0)]


def test_rem_below_drops_lower_scores_only(store: Store, keys: Keys) -> None:
    ids = keys.event_ids("t", 0, 0)
    t = 1_700_000_000_123  # millisecond times: must not round on the way through Lua
    commit(store, lambda b: b.zadd(ids, {"a": t - 1, "b": t, "c": t + 1}))
    commit(store, lambda b: b.zrem_below(ids, t))
    assert store.zscores(ids, ["a", "b", "c"]) == [None, float(t), float(t + 1)]
    commit(store, lambda b: b.zadd(ids, {"b": t + 5}))  # rescored: the old score is gone
    commit(store, lambda b: b.zrem_below(ids, t + 2))
    assert store.zscores(ids, ["b", "c"]) == [float(t + 5), None]
    commit(store, lambda b: b.zrem_below(keys.event_ids("t", 9, 0), t))  # absent key: no-op
    assert store.zcard(keys.event_ids("t", 9, 0)) == 0


def test_scores_of_members_in_several_keys(store: Store, keys: Keys) -> None:
    a, b = keys.event_ids("t", 0, 1), keys.event_ids("t", 0, 2)
    commit(store, lambda w: (w.zadd(a, {"x": 1.0, "y": 2.0}), w.zadd(b, {"x": 3.0})))
    pairs = [(a, "y"), (b, "x"), (a, "x"), (b, "y"), (keys.event_ids("t", 5, 0), "x")]
    assert store.zscores_each(pairs) == [2.0, 3.0, 1.0, None, None]
    assert store.zscores_each([]) == []


def test_set_bytes_with_a_ttl(store: Store, keys: Keys) -> None:
    k = keys.session_embedding("u")
    commit(store, lambda b: b.set_bytes(k, b"\x01", ttl_s=100))
    assert store.get_bytes([k]) == [b"\x01"]
    assert 99 <= (store.ttl(k) or 0) <= 100
    commit(store, lambda b: b.set_bytes(k, b"\x02"))  # a plain SET clears the TTL
    assert store.ttl(k) is None


def test_hgetall_many(store: Store, keys: Keys) -> None:
    commit(store, lambda b: b.hset(keys.item("a"), {"x": "1"}))
    assert store.hgetall_many([keys.item("a"), keys.item("none")]) == [{"x": "1"}, {}]
    assert store.hgetall_many([]) == []
