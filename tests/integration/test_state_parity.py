"""Embedded mode and Redis mode run the same processors: same stream, same state."""

from __future__ import annotations

import time

import pytest

from features.keys import Keys
from features.settings import FeatureSettings
from features.sharding import ShardLayout
from features.store import Store
from features.stores.memory_store import InMemoryStore
from features.stores.sharded_store import ShardedStore
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.settings import WorkerSettings
from streams.worker.pipeline import run_pipeline
from tests.state import assert_same_state, readable_state

pytestmark = pytest.mark.integration


def stream(seed: int, n: int) -> list:  # type: ignore[type-arg]
    sim = StreamSimulator(SimulatorConfig(users=300, items=800, embedding_dim=64), seed=seed)
    start = int(time.time() * 1000) - 3_600_000
    return [*sim.initial_items(start), *sim.events(n, start_ms=start)]


@pytest.fixture(params=["redis", "redis-cluster"])
def live_store(request: pytest.FixtureRequest, namespace: str) -> Store:
    """The single server, one shard; and the 3-master cluster (through redis-py's
    RedisCluster) with the namespace split into 12 shards, compared after the shard merge."""
    if request.param == "redis":
        store: Store = request.getfixturevalue("redis_store")
        return store
    return ShardedStore(request.getfixturevalue("redis_cluster_store"), ShardLayout(namespace, 12))


def test_memory_and_redis_end_with_identical_state(live_store: Store, namespace: str) -> None:
    events = stream(seed=11, n=20_000)
    features = FeatureSettings()
    # Small batches, so that many batch boundaries (and landmark reads) are exercised.
    worker = WorkerSettings(batch_size=700)
    now_ms = int(time.time() * 1000)
    memory, _, _ = run_pipeline(
        events, InMemoryStore(), namespace=namespace, worker=worker, now_ms=now_ms
    )
    run_pipeline(events, live_store, namespace=namespace, worker=worker, now_ms=now_ms)
    keys = Keys(namespace)
    expected = readable_state(memory, keys, features, now_ms / 1000)
    actual = readable_state(live_store, keys, features, now_ms / 1000)
    assert len(expected) > 1000  # trending, covisitation, seen-sets, catalog…
    assert_same_state(actual, expected, rel=1e-12)
