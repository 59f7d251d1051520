"""The feed on real Kafka and Redis with a real worker and a real `serve` process: clicks
reach the next feed within a second, and every served feed comes back as an impression.

Timing choice: the one-second promise is measured from the moment the worker's applied
offsets (in Redis, written in the same transaction as the state) cover the clicks, and the
feed is polled from then on. That is the part streamrec controls and it is deterministic on
this machine: after the commit, the serving path reads the user's state (seen-set, session
and user embeddings) uncached, so the very next feed changes. The time from POST /events
to the worker's commit (producer linger, broker, consumer fetch) is measured and reported
too, but only bounded loosely, since it depends on the broker's fetch timing and the load
of the machine, not on the feed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer

from features.attribution import decode_open
from features.stores.redis_store import RedisStore
from tests.helpers import wait_for
from tests.integration.deployment import Deployment, deployed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CATEGORIES = ["books", "games", "music", "sports", "travel"]
TARGET = "music"  # the category the reader starts clicking
PER_CATEGORY = 24
DIM = 64  # the default embedding dimension
DAY_MS = 86_400_000
K = 20


@pytest.fixture
def deployment(kafka_bootstrap: str, redis_url: str) -> Iterator[Deployment]:
    with deployed(Deployment(kafka_bootstrap, redis_url)) as d:
        yield d


def now_ms() -> int:
    return int(time.time() * 1000)


def catalog() -> list[dict[str, object]]:
    """Items whose embeddings cluster by category. All are over a day old (no exploration
    slot), and the target category's are the oldest, so the fresh source never offers them."""
    rng = np.random.default_rng(11)
    order = [TARGET] + [c for c in CATEGORIES if c != TARGET]
    items: list[dict[str, object]] = []
    for rank, category in enumerate(order):
        axis = np.zeros(DIM)
        axis[CATEGORIES.index(category) * 8] = 1.0
        for n in range(PER_CATEGORY):
            vector = axis + rng.normal(0.0, 0.05, DIM)
            items.append(
                {
                    "item_id": f"{category}-{n:02d}",
                    "ts": now_ms(),
                    "category": category,
                    "creator": f"{category}-creator-{n % 8}",
                    "created_at": now_ms() - 30 * DAY_MS + (rank * PER_CATEGORY + n) * 60_000,
                    "embedding": [float(x) for x in vector],
                }
            )
    return items


def interaction(user: str, item: str, kind: str = "click") -> dict[str, object]:
    return {
        "event_id": uuid.uuid4().hex,
        "user_id": user,
        "item_id": item,
        "type": kind,
        "ts": now_ms(),
    }


def background() -> list[dict[str, object]]:
    """Other users' views and clicks, outside the target category: they make the trending,
    popular and co-visitation lists, none of which then holds a target item."""
    events = []
    others = [c for c in CATEGORIES if c != TARGET]
    for u in range(12):
        for j in range(5):
            category = others[(u + j) % len(others)]
            events.append(
                interaction(f"crowd-{u}", f"{category}-{(u * 3 + j) % PER_CATEGORY:02d}", "view")
            )
        events.append(interaction(f"crowd-{u}", f"{others[u % len(others)]}-00"))
    return events


def feed(d: Deployment, user: str, request_id: str) -> dict[str, object]:
    response = httpx.get(
        f"{d.base}/feed/{user}",
        params={"k": K, "request_id": request_id, "debug": "true"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    assert body["degraded"] is False
    return body


def target_share(body: dict[str, object]) -> float:
    items = body["items"]
    assert isinstance(items, list) and items
    return sum(item["category"] == TARGET for item in items) / len(items)


def post(d: Deployment, path: str, events: list[dict[str, object]]) -> None:
    response = httpx.post(f"{d.base}{path}", json=events, timeout=10)
    assert response.status_code == 202, response.text


def seeded(d: Deployment) -> int:
    """Publish the catalog and the crowd's history; wait until the worker and the API's ANN
    replica have all of it. Returns how many interactions were applied."""
    items, history = catalog(), background()
    post(d, "/items", items)
    wait_for("the catalog in Redis", lambda: d.applied("items") == len(items), timeout_s=30)

    def replica_items() -> bool:
        index = httpx.get(f"{d.base}/health", timeout=5).json()["index"]
        return bool(index["items"] == len(items))

    wait_for("the catalog in the API's ANN replica", replica_items, timeout_s=30)
    post(d, "/events", history)
    wait_for("the history", lambda: d.applied("interactions") == len(history), timeout_s=30)
    return len(history)


def applied_at(d: Deployment, topic: str, count: int, timeout_s: float = 30.0) -> float:
    """The monotonic time at which the offsets table first shows ``count`` messages of
    ``topic`` applied (polled every 5 ms, so the time is at most that late)."""
    key = d.keys.applied_offsets(d.topics[topic])
    store = RedisStore(d.redis_url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(int(o) + 1 for o in store.hgetall(key).values()) >= count:
                return time.monotonic()
            time.sleep(0.005)
    finally:
        store.close()
    raise AssertionError(f"the worker did not apply {count} messages of {topic} in {timeout_s}s")


def test_clicks_on_a_category_raise_its_share_of_the_next_feed_within_a_second(
    deployment: Deployment,
) -> None:
    applied_before = seeded(deployment)
    reader = "reader"
    before = feed(deployment, reader, "before")
    assert before["segment"] == "new|other"
    share_before = target_share(before)
    served_before = {item["item_id"] for item in before["items"]}  # type: ignore[union-attr]

    clicked = [f"{TARGET}-{n:02d}" for n in (1, 5, 9, 13)]
    assert not served_before & set(clicked)
    posted = time.monotonic()
    post(deployment, "/events", [interaction(reader, item) for item in clicked])
    applied = applied_at(deployment, "interactions", applied_before + len(clicked))

    after: dict[str, object] | None = None
    attempts = 0
    while time.monotonic() - applied < 1.0:
        attempts += 1
        body = feed(deployment, reader, f"after-{attempts}")
        if target_share(body) > share_before:
            after = body
            break
        time.sleep(0.02)
    visible = time.monotonic()
    assert after is not None, (
        f"{TARGET} share still {share_before} one second after the worker applied the clicks"
    )
    print(
        f"\nclicks applied {applied - posted:.3f}s after POST; feed changed "
        f"{visible - applied:.3f}s after they were applied ({attempts} feed(s)); "
        f"{TARGET} share {share_before:.2f} -> {target_share(after):.2f}"
    )
    assert visible - applied <= 1.0
    assert applied - posted < 5.0, "POST /events -> applied took far too long"
    items = after["items"]
    assert isinstance(items, list)
    # The clicks are applied, not just luck: the user is now returning, the clicked items
    # are filtered out as seen, and the target items come from the user's embeddings.
    assert after["segment"] == "returning|other"
    assert not {item["item_id"] for item in items} & set(clicked)
    assert target_share(after) >= 0.2
    target_sources = {s for item in items if item["category"] == TARGET for s in item["sources"]}
    assert target_sources & {"session_ann", "user_ann"}, target_sources


def test_a_served_feed_comes_back_as_an_impression_the_worker_opens(
    deployment: Deployment,
) -> None:
    seeded(deployment)
    body = feed(deployment, "viewer", "feed-to-log")
    items = body["items"]
    assert isinstance(items, list) and items
    served = [(item["item_id"], item["source"], item["propensity"]) for item in items]

    consumer = Consumer(
        {
            "bootstrap.servers": deployment.bootstrap,
            "group.id": f"{deployment.namespace}-impressions-reader",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([deployment.topics["impressions"]])
    logged: list[dict[str, object]] = []

    def on_topic() -> bool:
        for msg in consumer.consume(num_messages=50, timeout=0.5):
            if msg.error() is None:
                value = orjson.loads(msg.value())
                if value["request_id"] == "feed-to-log":
                    assert msg.key() == b"viewer"
                    logged.append(value)
        return bool(logged)

    try:
        wait_for("the impression on the impressions topic", on_topic, timeout_s=20)
    finally:
        consumer.close()
    impression = logged[0]
    assert impression["user_id"] == "viewer"
    assert impression["segment"] == body["segment"]
    assert impression["policy_version"] == body["policy_version"]
    assert str(impression["propensity_method"]).startswith("monte-carlo:")
    slots = impression["slots"]
    assert isinstance(slots, list)
    assert [(s["item_id"], s["source"]) for s in slots] == [(i, s) for i, s, _ in served]
    assert [s["position"] for s in slots] == list(range(len(served)))
    for slot, (_, _, propensity) in zip(slots, served, strict=True):
        assert slot["propensity"] == pytest.approx(propensity)
        assert 0.0 < slot["propensity"] <= 1.0

    # The worker applied it: an open record under the user's index, holding the same slots.
    keys = deployment.keys
    store = RedisStore(deployment.redis_url)
    try:
        wait_for(
            "the open impression in Redis",
            lambda: "feed-to-log" in dict(store.top(keys.impressions("viewer"), 50)),
            timeout_s=20,
        )
        (raw,) = store.get_bytes([keys.impression("feed-to-log")])
    finally:
        store.close()
    assert raw is not None
    record = decode_open(raw)
    assert record is not None
    assert (record.user_id, record.segment) == ("viewer", body["segment"])
    assert [(s.item_id, s.source, s.clicked) for s in record.slots] == [
        (i, s, False) for i, s, _ in served
    ]
