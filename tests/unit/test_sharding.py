"""Sharded key layout: routing, merged reads, and the same state as one shard, without Redis."""

from __future__ import annotations

import time

import pytest

from features.batch import WriteBatch, ZIncrBy
from features.keys import Keys
from features.settings import FeatureSettings
from features.sharding import HOME, SPLIT, ShardLayout, merge_tops
from features.stores.memory_store import InMemoryStore
from features.stores.sharded_store import ShardedStore, ShardLayoutError, check_layout
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.settings import WorkerSettings
from streams.worker.pipeline import run_pipeline
from tests.state import assert_same_state, readable_state

KEYS = Keys("sr")


def test_a_users_and_an_items_state_each_live_in_one_shard() -> None:
    layout = ShardLayout("sr", 8)
    user_keys = [KEYS.seen("u7"), KEYS.session_embedding("u7"), KEYS.pending_clicks("u7")]
    item_keys = [KEYS.item("i3"), KEYS.item_embedding("i3"), KEYS.covisitation("i3")]
    assert {layout.place(k) for k in user_keys} == {layout.shard_of("u7")}
    assert {layout.place(k) for k in item_keys} == {layout.shard_of("i3")}
    assert layout.place(KEYS.landmarks()) == HOME == layout.place(KEYS.applied_offsets("t"))
    assert layout.place(KEYS.trending(60.0)) == SPLIT == layout.place(KEYS.items_by_time())
    for key in [*user_keys, *item_keys, KEYS.landmarks()]:
        assert layout.logical(layout.stored(key)) == key


def test_a_batch_is_grouped_by_slot_with_its_checkpoint_and_guards_at_home() -> None:
    layout = ShardLayout("sr", 4)
    batch = WriteBatch()
    batch.guard(KEYS.applied_offsets("t"), "0", "9")
    items = [f"i{n}" for n in range(40)]
    for item in items:
        batch.zincrby(KEYS.popularity_all_time(), item, 1.0)
    batch.zscale_prefix(KEYS.covisitation_prefix(), 0.5)
    batch.hset(KEYS.applied_offsets("t"), {"0": "20"})
    routed = layout.route(batch)
    assert routed.home.guards == {(KEYS.applied_offsets("t"), "0"): "9"}
    assert routed.marks == {"t/0": "20"} and routed.rotates
    assert sorted(routed.shards) == [0, 1, 2, 3]
    spread: dict[str, int] = {}
    for shard, group in routed.shards.items():
        for op in group:
            if isinstance(op, ZIncrBy):
                assert op.key == layout.stored(KEYS.popularity_all_time(), shard)
                spread.update(dict.fromkeys(op.amounts, shard))
    assert spread == {item: layout.shard_of(item) for item in items}


def test_what_a_shard_cannot_hold_is_refused() -> None:
    layout = ShardLayout("sr", 4)
    guarded = WriteBatch()
    guarded.guard(KEYS.seen("u"), "f", None)
    with pytest.raises(ValueError, match="only home hashes"):
        layout.route(guarded)
    trimmed = WriteBatch()
    trimmed.zkeeptop(KEYS.trending(60.0), 10)
    with pytest.raises(ValueError, match="split set cannot take"):
        layout.route(trimmed)
    with pytest.raises(ValueError, match="not a key of namespace"):
        layout.place("{other}:seen:u")


def test_merged_tops_are_ordered_as_one_sorted_set() -> None:
    rows = {f"m{n}": float(n % 5) for n in range(60)}  # many ties
    whole, sharded = InMemoryStore(), ShardedStore(InMemoryStore(), ShardLayout("sr", 6))
    for store in (whole, sharded):
        batch = WriteBatch()
        batch.zadd(KEYS.trending(60.0), rows)
        store.commit(batch)
    for k in (1, 7, 60, 100):
        assert sharded.top(KEYS.trending(60.0), k) == whole.top(KEYS.trending(60.0), k)
    assert sharded.zcard(KEYS.trending(60.0)) == 60
    assert merge_tops([[], [("a", 1.0)]], 5) == [("a", 1.0)]


def test_a_stream_leaves_the_same_state_in_shards_as_in_one() -> None:
    sim = StreamSimulator(SimulatorConfig(users=200, items=400, embedding_dim=16), seed=5)
    start = int(time.time() * 1000) - 3_600_000
    events = [*sim.initial_items(start), *sim.events(6_000, start_ms=start)]
    features = FeatureSettings(embedding_dim=16)
    worker = WorkerSettings(batch_size=500)
    now_ms = start + 3_600_000
    whole, _, _ = run_pipeline(events, features=features, worker=worker, now_ms=now_ms)
    inner = InMemoryStore()
    sharded = ShardedStore(inner, ShardLayout("sr", 5))
    run_pipeline(events, sharded, features=features, worker=worker, now_ms=now_ms)
    expected = readable_state(whole, KEYS, features, now_ms / 1000)
    assert len(expected) > 500
    assert_same_state(readable_state(sharded, KEYS, features, now_ms / 1000), expected, rel=1e-12)
    # Stored apart: every shard holds part of the state.
    assert {key.split("}")[0] for key in inner.dump("{sr#")} == {f"{{sr#{s}" for s in range(5)}


def test_a_store_written_in_other_shards_is_refused() -> None:
    store = InMemoryStore()
    check_layout(store, ShardLayout("sr", 6), record=True)
    check_layout(store, ShardLayout("sr", 6), record=False)
    with pytest.raises(ShardLayoutError, match="stored in 6 shard"):
        check_layout(store, ShardLayout("sr", 1), record=True)
    unsharded = InMemoryStore()
    batch = WriteBatch()
    batch.hset(KEYS.applied_offsets("t"), {"0": "5"})
    unsharded.commit(batch)
    with pytest.raises(ShardLayoutError, match="stored in 1 shard"):
        check_layout(unsharded, ShardLayout("sr", 6), record=True)
    check_layout(unsharded, ShardLayout("sr", 1), record=True)
