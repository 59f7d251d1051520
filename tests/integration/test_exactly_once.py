"""Exactly-once effects and scale-out, on real worker processes, Kafka and Redis.

The ground truth is the same event log applied by the same processors in one process on the
in-memory store: after kill -9s, restarts, and two workers sharing the partitions, Redis
must hold exactly that state.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator, Sequence

import pytest

from features.keys import Keys
from features.settings import FeatureSettings
from features.stores.memory_store import InMemoryStore
from features.stores.redis_store import RedisStore
from streams.pipeline import run_pipeline
from streams.producer import EventProducer
from streams.schema import Event
from streams.settings import TopicSettings
from streams.simulator import SimulatorConfig, StreamSimulator
from tests.helpers import wait_for
from tests.integration.deployment import Deployment
from tests.state import assert_same_state, readable_state

pytestmark = pytest.mark.integration


#: Bounded neighbour lists are trimmed at batch ends, so which weak neighbours survive depends
#: on where batches are cut (as in any bounded heavy-hitter list). The bound is lifted here so
#: that exactness can be checked pair by pair; the trimming has unit tests of its own.
FEATURES = FeatureSettings(covisitation_neighbours=10_000)


@pytest.fixture
def deployment(kafka_bootstrap: str, redis_url: str) -> Iterator[Deployment]:
    d = Deployment(
        kafka_bootstrap,
        redis_url,
        partitions=6,
        env={"STREAMREC_FEATURES__COVISITATION_NEIGHBOURS": str(FEATURES.covisitation_neighbours)},
    )
    try:
        d.create_topics()
        yield d
    finally:
        d.down()


def simulated(n: int, seed: int) -> tuple[list[Event], list[Event]]:
    """Catalog items, then ``n`` interactions (no new items mid-stream: the order between
    the items and interactions topics is not defined, and categories depend on it)."""
    config = SimulatorConfig(users=3_000, items=5_000, new_item_probability=0.0)
    sim = StreamSimulator(config, seed=seed)
    start = int(time.time() * 1000) - 6 * 3_600_000
    return list(sim.initial_items(start)), list(sim.events(n, start_ms=start))


def produce(deployment: Deployment, events: Sequence[Event]) -> None:
    topics = TopicSettings(**{k: v for k, v in deployment.topics.items()})
    with EventProducer(deployment.bootstrap, topics, linger_ms=50) as producer:
        for event in events:
            producer.send(event)


def ground_truth(deployment: Deployment, items: list[Event], interactions: list[Event]) -> dict:  # type: ignore[type-arg]
    # Items first, as the test waits for the catalog before producing interactions.
    ns = deployment.namespace
    store, _, _ = run_pipeline(items, InMemoryStore(), namespace=ns, features=FEATURES)
    run_pipeline(interactions, store, namespace=ns, features=FEATURES)
    return readable_state(store, deployment.keys, FEATURES, NOW_S)


def redis_state(deployment: Deployment) -> dict:  # type: ignore[type-arg]
    store = RedisStore(deployment.redis_url)
    try:
        return readable_state(store, deployment.keys, FEATURES, NOW_S)
    finally:
        store.close()


NOW_S = time.time()


def test_kill_9_five_times_loses_nothing_and_counts_nothing_twice(deployment: Deployment) -> None:
    items, interactions = simulated(200_000, seed=5)
    worker = deployment.start_worker("eo-worker")
    produce(deployment, items)
    wait_for("the catalog", lambda: deployment.applied("items") == len(items), timeout_s=60)
    produce(deployment, interactions)
    rng = random.Random(7)
    kills = 0
    while kills < 5:
        time.sleep(rng.uniform(0.3, 1.5))
        done = deployment.applied("interactions")
        if done >= len(interactions):
            break
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        kills += 1
        worker = deployment.start_worker("eo-worker")
        # Make progress between kills, so every kill lands mid-stream.
        wait_for(
            "progress after a restart",
            lambda before=done: deployment.applied("interactions") > before,  # type: ignore[misc]
            timeout_s=60,
        )
    assert kills == 5, f"the stream was applied before 5 kills ({kills})"
    wait_for(
        "every interaction applied",
        lambda: deployment.applied("interactions") == len(interactions),
        timeout_s=180,
    )
    assert_same_state(redis_state(deployment), ground_truth(deployment, items, interactions))


def test_two_workers_in_one_group_split_the_work_and_reach_the_same_state(
    deployment: Deployment,
) -> None:
    items, interactions = simulated(60_000, seed=9)
    deployment.start_worker("w1")
    deployment.start_worker("w2")
    produce(deployment, items)
    wait_for("the catalog", lambda: deployment.applied("items") == len(items), timeout_s=60)
    produce(deployment, interactions)
    wait_for(
        "every interaction applied",
        lambda: deployment.applied("interactions") == len(interactions),
        timeout_s=180,
    )
    store = RedisStore(deployment.redis_url)
    try:
        beats = store.hgetall(Keys(deployment.namespace).workers())
    finally:
        store.close()
    # Both workers took a share of the partitions.
    import orjson

    applied = {w: orjson.loads(b)["applied"] for w, b in beats.items()}
    assert set(applied) == {"w1", "w2"} and all(n > 0 for n in applied.values()), applied
    assert_same_state(redis_state(deployment), ground_truth(deployment, items, interactions))
