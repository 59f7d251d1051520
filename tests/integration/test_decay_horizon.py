"""Decayed state over decades of event time, on a real worker, Kafka and Redis.

A stream jumps 30 years inside one batch (1971 → 2001, produced before the worker starts)
and 30 years across batches (2001 → 2031, produced once the first part is applied). Every
landmark moves by itself in the commit that needs it: the worker keeps running, dead-letters
nothing, and Redis holds the ground truth computed from the same events in one process.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import orjson
import pytest

from features.settings import FeatureSettings
from features.stores.memory_store import InMemoryStore
from features.stores.redis_store import RedisStore
from streams.schema import Event, Interaction, Item
from streams.settings import WorkerSettings
from streams.worker.pipeline import run_pipeline
from tests.helpers import wait_for
from tests.integration.deployment import Deployment, deployed, produce
from tests.state import assert_same_state, readable_state

pytestmark = pytest.mark.integration

YEAR_MS = int(365.25 * 86_400_000)
T1971 = 31_536_000_000
#: The last part is five years ahead of the wall clock: the worker is told to allow it.
MAX_FUTURE_MS = 7 * YEAR_MS
#: A 1-day co-visitation half-life, so that 30 years (~11,000 half-lives) must move it too.
FEATURES = FeatureSettings(covisitation_neighbours=10_000, covisitation_half_life_s=86_400.0)
DIM = FEATURES.embedding_dim


@pytest.fixture
def deployment(kafka_bootstrap: str, redis_url: str) -> Iterator[Deployment]:
    with deployed(
        Deployment(
            kafka_bootstrap,
            redis_url,
            env={
                "STREAMREC_WORKER__MAX_FUTURE_MS": str(MAX_FUTURE_MS),
                "STREAMREC_FEATURES__COVISITATION_NEIGHBOURS": str(
                    FEATURES.covisitation_neighbours
                ),
                "STREAMREC_FEATURES__COVISITATION_HALF_LIFE_S": str(
                    FEATURES.covisitation_half_life_s
                ),
            },
        ),
        start=False,
    ) as d:
        yield d


def burst(rng: random.Random, start_ms: int, n: int, tag: str) -> list[Event]:
    """``n`` interactions a second apart from ``start_ms``: 20 users, 12 items."""
    return [
        Interaction(
            event_id=f"{tag}-{k}",
            user_id=f"u{rng.randrange(20)}",
            item_id=f"i{rng.randrange(12)}",
            type=rng.choice(["view", "click", "click", "purchase"]),
            ts=start_ms + 1000 * k,
        )
        for k in range(n)
    ]


def test_thirty_year_jumps_in_a_batch_and_across_batches_keep_the_worker_exact(
    deployment: Deployment,
) -> None:
    rng = random.Random(3)
    items: list[Event] = [
        Item(
            item_id=f"i{n}",
            ts=T1971,
            category=f"c{n % 3}",
            embedding=[rng.uniform(-1, 1) for _ in range(DIM)],
        )
        for n in range(12)
    ]
    first = burst(rng, T1971, 200, "a") + burst(rng, T1971 + 30 * YEAR_MS, 200, "b")
    second = burst(rng, T1971 + 60 * YEAR_MS, 200, "c")
    produce(deployment, items)
    produce(deployment, first)  # one batch spans the first jump
    worker = deployment.start_worker("w")
    wait_for("the first part", lambda: deployment.applied("interactions") == 400, timeout_s=60)
    produce(deployment, second)
    wait_for("the second part", lambda: deployment.applied("interactions") == 600, timeout_s=60)
    assert worker.poll() is None, "the worker stopped"

    now_s = (T1971 + 60 * YEAR_MS) / 1000 + 200.0
    settings = WorkerSettings(max_future_ms=MAX_FUTURE_MS)
    ns, keys = deployment.namespace, deployment.keys
    truth, _, _ = run_pipeline(items, InMemoryStore(), namespace=ns, features=FEATURES)
    _, ground, _ = run_pipeline(
        first + second, truth, namespace=ns, features=FEATURES, worker=settings
    )
    assert ground.stats.dead_lettered == 0
    store = RedisStore(deployment.redis_url)
    try:
        live = readable_state(store, keys, FEATURES, now_s)
        beats = store.hgetall(keys.workers())
        landmarks = store.hgetall(keys.landmarks())
    finally:
        store.close()
    assert [orjson.loads(b)["dead_lettered"] for b in beats.values()] == [0]
    # Every family's landmark followed the stream to its last part.
    assert all(float(v) > (T1971 + 59 * YEAR_MS) / 1000 for v in landmarks.values()), landmarks
    assert_same_state(live, readable_state(truth, keys, FEATURES, now_s))
    assert time.time() < now_s  # the stream did end in the future, as the test meant
