"""streamrec's producers and Apache's Java producer put a key on the same partition, so a
re-send through the other client is caught as a duplicate (real broker, real Java client)."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from features.keys import Keys
from features.stores.redis_store import RedisStore
from streamrec.services.common import layout
from streamrec.settings import Settings
from streams.io.kafka import RawProducer
from streams.io.partitioning import partition_for
from streams.io.producer import EventProducer
from streams.schema import Interaction
from streams.settings import TopicSettings
from tests.helpers import wait_for
from tests.integration.deployment import Deployment, deployed

pytestmark = pytest.mark.integration

PARTITIONS = 6
KEYS = 1000


def java_produce(bootstrap: str, libs: Path, topic: str, lines: list[bytes]) -> None:
    """Send ``key<TAB>value`` lines through org.apache.kafka.tools.ConsoleProducer."""
    java = shutil.which("java")
    if java is None:
        pytest.skip("no java on PATH")
    done = subprocess.run(
        [
            java,
            "-cp",
            f"{libs}/*",
            "org.apache.kafka.tools.ConsoleProducer",
            "--bootstrap-server",
            bootstrap,
            "--topic",
            topic,
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=\t",
        ],
        input=b"\n".join(lines) + b"\n",
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def partitions_of(bootstrap: str, topic: str, count: int) -> dict[bytes, int]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    seen: dict[bytes, int] = {}

    def collect() -> bool:
        for msg in consumer.consume(num_messages=500, timeout=1.0):
            if msg.error() is None and msg.key() is not None:
                seen[msg.key()] = msg.partition()
        return len(seen) >= count

    try:
        wait_for(f"{count} keys on {topic}", collect, timeout_s=60)
    finally:
        consumer.close()
    return seen


@pytest.fixture
def libs(base_settings: Settings) -> Path:
    path = layout(base_settings.services).kafka_libs
    if not any(path.glob("kafka-tools-*.jar")):
        pytest.skip(f"no kafka-tools jar in {path}; run `streamrec services up`")
    return path


@pytest.fixture
def two_topics(kafka_bootstrap: str) -> Iterator[tuple[str, str]]:
    run = uuid.uuid4().hex[:8]
    names = (f"part-sdk-{run}", f"part-java-{run}")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names]).values():
        future.result(30)
    try:
        yield names
    finally:
        for future in admin.delete_topics(list(names)).values():
            future.result(30)


def test_the_sdk_and_the_java_producer_pick_the_same_partition_for_every_key(
    kafka_bootstrap: str, libs: Path, two_topics: tuple[str, str]
) -> None:
    sdk_topic, java_topic = two_topics
    keys = [f"user-{n}-{uuid.uuid4().hex[:6]}".encode() for n in range(KEYS)]
    producer = RawProducer(kafka_bootstrap, {})
    for key in keys:
        producer.send_raw(sdk_topic, key, b"{}", {})
    assert producer.flush(30) == 0
    java_produce(kafka_bootstrap, libs, java_topic, [k + b"\t{}" for k in keys])

    by_sdk = partitions_of(kafka_bootstrap, sdk_topic, KEYS)
    by_java = partitions_of(kafka_bootstrap, java_topic, KEYS)
    assert by_sdk == by_java
    assert by_sdk == {k: partition_for(k, PARTITIONS) for k in keys}
    assert len(set(by_sdk.values())) == PARTITIONS  # a real spread, not one partition


@pytest.fixture
def deployment(kafka_bootstrap: str, redis_url: str) -> Iterator[Deployment]:
    with deployed(Deployment(kafka_bootstrap, redis_url, partitions=PARTITIONS)) as d:
        yield d


def test_a_resend_through_the_other_client_is_a_duplicate(
    deployment: Deployment, libs: Path
) -> None:
    topics = TopicSettings(**{k: v for k, v in deployment.topics.items()})
    now = int(time.time() * 1000)
    first = Interaction(
        event_id="cross-client-1", user_id="jvm-user", item_id="jvm-item", type="click", ts=now
    )
    java_produce(
        deployment.bootstrap,
        libs,
        topics.interactions,
        [b"jvm-user\t" + orjson.dumps({**_fields(first)})],
    )
    with EventProducer(deployment.bootstrap, topics, linger_ms=20) as producer:
        producer.send(first)  # the same event again, through the SDK
        producer.send(
            Interaction(event_id="after", user_id="jvm-user", item_id="later", type="click", ts=now)
        )
    wait_for("both real events applied", lambda: deployment.applied("interactions") >= 3)

    def dead_lettered() -> int:
        health = httpx.get(f"{deployment.base}/health", timeout=5).json()
        return sum(w["dead_lettered"] for w in health["consumers"]["workers"])

    # The re-send reached the partition of the first copy, whose event ids the worker keeps:
    # it is dead-lettered as a duplicate (on another partition it would have counted twice).
    wait_for("the re-send dead-lettered as a duplicate", lambda: dead_lettered() == 1)
    store = RedisStore(deployment.redis_url)
    try:
        popularity = Keys(deployment.namespace).popularity_all_time()
        once, control = store.zscores(popularity, ["jvm-item", "later"])
        assert once == control and once is not None and once > 0  # one click each
    finally:
        store.close()


def _fields(event: Interaction) -> dict[str, object]:
    return {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "type": event.type,
        "ts": event.ts,
    }
