"""produce → Kafka → worker → Redis → API, with real processes, broker and server."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, Producer

from features.keys import Keys
from features.stores.redis_store import RedisStore
from streams.io.dead_letter import REASON, SOURCE_TOPIC
from tests.helpers import wait_for
from tests.integration.deployment import Deployment, deployed

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment(kafka_bootstrap: str, redis_url: str) -> Iterator[Deployment]:
    with deployed(Deployment(kafka_bootstrap, redis_url)) as d:
        yield d


def event(user: str, item: str, kind: str = "click") -> dict[str, object]:
    return {
        "event_id": uuid.uuid4().hex,
        "user_id": user,
        "item_id": item,
        "type": kind,
        "ts": int(time.time() * 1000),
    }


def test_events_posted_to_the_api_reach_the_feed_through_kafka_and_redis(
    deployment: Deployment,
) -> None:
    clicks = [event(f"fan{n}", "hot-item") for n in range(6)] + [event("fan0", "warm-item")]
    response = httpx.post(f"{deployment.base}/events", json=clicks, timeout=10)
    assert response.status_code == 202, response.text
    wait_for(
        "hot-item at the top of a new user's feed",
        lambda: deployment.feed("newcomer")[:2] == ["hot-item", "warm-item"],
    )
    # Idle since the POST: /health's producer backlog is the truth, not the last produce's.
    wait_for(
        "no buffered events reported once delivered",
        lambda: (
            "await delivery"
            not in httpx.get(f"{deployment.base}/health", timeout=5).json()["transport"]["detail"]
        ),
        timeout_s=2,
    )
    # fan0 has seen both; the feed leaves them out.
    assert "hot-item" not in deployment.feed("fan0")
    # The state really is in Redis, under the deployment's namespace.
    store = RedisStore(deployment.redis_url)
    try:
        keys = Keys(deployment.namespace)
        assert store.zscores(keys.seen("fan0"), ["hot-item", "warm-item"]) != [None, None]
        offsets = store.hgetall(keys.applied_offsets(deployment.topics["interactions"]))
        assert sum(int(o) + 1 for o in offsets.values()) == len(clicks)
    finally:
        store.close()


def test_the_produce_cli_sends_jsonl_and_reports_bad_lines(deployment: Deployment) -> None:
    lines = [orjson.dumps(event(f"p{n}", "cli-item")) for n in range(3)]
    lines.append(b'{"user_id": "p9", "item_id": "x", "type": "click"}')  # no event_id, no ts
    lines.append(
        orjson.dumps({"item_id": "cli-new", "ts": int(time.time() * 1000), "category": "news"})
    )
    result = deployment.cli("produce", "-", stdin=b"\n".join(lines) + b"\n")
    report = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert (report["sent"], report["rejected"]) == (4, 1)
    assert result.returncode == 1  # a rejected line is reported as a failure
    wait_for("cli-item in the feed", lambda: "cli-item" in deployment.feed("someone"))


def test_a_malformed_message_is_dead_lettered_and_the_worker_goes_on(
    deployment: Deployment,
) -> None:
    producer = Producer({"bootstrap.servers": deployment.bootstrap})
    topic = deployment.topics["interactions"]
    producer.produce(topic, key=b"u1", value=b"\x00not json at all")
    producer.produce(topic, key=b"u1", value=orjson.dumps({**event("u1", "x"), "type": "poke"}))
    producer.produce(topic, key=b"u1", value=orjson.dumps(event("u1", "after-the-bad-ones")))
    assert producer.flush(10) == 0

    wait_for(
        "the valid event after the bad ones",
        lambda: "after-the-bad-ones" in deployment.feed("other-user"),
    )
    assert deployment.worker.poll() is None, "the worker must survive bad input"

    consumer = Consumer(
        {
            "bootstrap.servers": deployment.bootstrap,
            "group.id": f"{deployment.namespace}-dlq",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([deployment.topics["dead_letter"]])
    dead: list[tuple[bytes, dict[str, bytes]]] = []

    def collect() -> bool:
        for msg in consumer.consume(num_messages=10, timeout=1.0):
            if msg.error() is None:
                dead.append((msg.value(), dict(msg.headers() or [])))
        return len(dead) >= 2

    try:
        wait_for("two dead-lettered messages", collect)
    finally:
        consumer.close()
    values = {value: headers for value, headers in dead}
    assert b"\x00not json at all" in values
    assert values[b"\x00not json at all"][SOURCE_TOPIC] == topic.encode()
    assert b"malformed" in values[b"\x00not json at all"][REASON]
    poke = next(h for v, h in dead if b"poke" in v)
    assert b"Invalid enum value 'poke'" in poke[REASON]

    def dead_lettered() -> int:
        health = httpx.get(f"{deployment.base}/health", timeout=5).json()
        return sum(w["dead_lettered"] for w in health["consumers"]["workers"])

    wait_for("the heartbeat to count the dead letters", lambda: dead_lettered() == 2)
