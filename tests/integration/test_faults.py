"""Fault injection on real processes, against real Kafka and Redis.

Each test breaks a private Redis server or Kafka broker of its own (``faults.py``), never the
shared services other test runs use. What is checked is what a user of the system would
notice: lost or doubled effects (the Redis state against the same events applied in one
process), 500s, events accepted and then dropped, and a /health that lies.

Kill -9 of a worker mid-batch is ``test_exactly_once.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from features.ann import HnswIndex
from features.stores.redis_store import RedisStore
from streams.io.producer import EventProducer
from streams.schema import Event, Interaction, Item, encode
from streams.settings import TopicSettings
from tests.helpers import start, stop, wait_for
from tests.integration.deployment import Deployment, produce
from tests.integration.faults import (
    FEATURES_ENV,
    PrivateKafka,
    PrivateRedis,
    cleaned_up,
    ground_truth,
    log_text,
    redis_state,
    simulated,
    stopped_at_exit,
)
from tests.state import assert_same_state

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(180)]


# ------------------------------------------------------------------------------ helpers


class Streamer(threading.Thread):
    """Produces events at a steady rate in the background, as live traffic does."""

    def __init__(self, deployment: Deployment, events: Sequence[Event], per_s: float) -> None:
        super().__init__(name="streamer", daemon=True)
        self.deployment, self.events, self.per_s = deployment, events, per_s
        self.error: BaseException | None = None
        self.cancelled = threading.Event()

    def run(self) -> None:
        try:
            topics = TopicSettings(**dict(self.deployment.topics))
            with EventProducer(self.deployment.bootstrap, topics, linger_ms=20) as producer:
                chunk = max(1, int(self.per_s / 20))
                started = time.monotonic()
                for n in range(0, len(self.events), chunk):
                    if self.cancelled.is_set():
                        return  # the test failed: stop before its topics go
                    for event in self.events[n : n + chunk]:
                        producer.send(event)
                    ahead = started + (n + chunk) / self.per_s - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, num_partitions=partitions)]).values():
        future.result(timeout=30)


def start_api(deployment: Deployment, name: str = "api", **env: str) -> Any:
    proc = start(["serve"], {**deployment.env, **env}, f"{deployment.namespace}-{name}")
    deployment.procs.append(proc)
    return proc


def get(deployment: Deployment, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{deployment.base}{path}", params=params, timeout=10)


def applied_all(deployment: Deployment, items: int, interactions: int) -> bool:
    return (
        deployment.applied("items") == items and deployment.applied("interactions") == interactions
    )


# ------------------------------------------------------------------------------ (2) Redis


@pytest.fixture
def redis_root(tmp_path: Path) -> Path:
    return tmp_path / "redis"


def _redis_deployment(kafka_bootstrap: str, redis: PrivateRedis) -> Deployment:
    d = Deployment(kafka_bootstrap, redis.url, partitions=3, env=FEATURES_ENV)
    d.create_topics()
    return d


def _teardown(
    d: Deployment, extra_topics: Sequence[str] = (), streamer: Streamer | None = None
) -> None:
    if streamer is not None:
        streamer.cancelled.set()
        streamer.join(timeout=60)
    try:
        d.down()
    except Exception:  # noqa: BLE001 - the private Redis may be down when a test failed
        for proc in d.procs:
            stop(proc)
    if extra_topics:
        admin = AdminClient({"bootstrap.servers": d.bootstrap})
        for future in admin.delete_topics(list(extra_topics)).values():
            try:
                future.result(timeout=30)
            except Exception:  # noqa: BLE001, S110 - best-effort cleanup
                pass


#: Found by these tests, outside the files this change may touch (see the report).


def _outage_with_traffic(
    d: Deployment, redis: PrivateRedis, events: Sequence[Event], down_s: float = 2.0
) -> None:
    """Redis dies while the worker is idle, and events arrive before it is back."""
    redis.kill()
    produce(d, events)
    time.sleep(down_s)
    redis.start()


def test_redis_killed_mid_stream_with_its_aof_the_worker_resumes_and_the_api_degrades(
    kafka_bootstrap: str, redis_root: Path
) -> None:
    """kill -9 Redis (append-only file on) while events stream in, restart it 3 s later.

    The worker waits with backoff (one log line down, one back up) and loses nothing: the
    final state is the ground truth. Meanwhile GET /feed answers 200 with ``degraded: true``
    and the last good trending items, never a 500, and /health says the store is down.
    Then once more, Redis dying while the worker is idle and events arriving meanwhile.
    """
    redis = PrivateRedis(redis_root, persistent=True)
    redis.start()
    d = _redis_deployment(kafka_bootstrap, redis)
    # Feeds served by the test log impressions; the worker must not learn from them here,
    # or the ground truth would have to include them.
    api_impressions = f"{d.namespace}.api-impressions"
    items, interactions = simulated(51_000, seed=21)
    stream, later = interactions[:50_000], interactions[50_000:]
    streamer = Streamer(d, stream, per_s=8_000)  # about 6 s of traffic
    try:
        create_topic(kafka_bootstrap, api_impressions)
        worker = d.start_worker("w")
        start_api(d, STREAMREC_TOPICS__IMPRESSIONS=api_impressions)
        wait_for("the API and a live worker", d.healthy, timeout_s=60)
        Streamer(d, items, per_s=50_000).run()
        wait_for("the catalog", lambda: d.applied("items") == len(items), timeout_s=60)

        streamer.start()
        wait_for("a quarter of the stream", lambda: d.applied("interactions") > 12_000, 60)
        good = get(d, "/feed/u1", k=10).json()
        assert good["degraded"] is False and good["items"], good

        redis.kill()
        degraded, slowest = 0, 0.0
        down_until = time.monotonic() + 3.0
        while time.monotonic() < down_until:
            t0 = time.monotonic()
            feed = get(d, "/feed/u1", k=10)
            slowest = max(slowest, time.monotonic() - t0)
            assert feed.status_code == 200, feed.text
            body = feed.json()
            assert body["degraded"] is True, body
            # From the last good data: the trending items read before the outage.
            assert body["items"], body
            assert {i["source"] for i in body["items"]} == {"trending"}
            degraded += 1
            trending = get(d, "/trending", window="1h")
            assert trending.status_code == 200 and trending.json()["degraded"] is True
            time.sleep(0.1)
        assert slowest < 2.0, f"a degraded feed took {slowest:.1f} s"
        health = get(d, "/health")
        assert health.status_code == 503 and health.json()["store"]["ok"] is False
        assert worker.poll() is None, "the worker died while Redis was down"
        # The embedding neighbours live in the process (its HNSW replica): still an answer.
        similar = get(d, f"/similar/{items[0].item_id}", k=5)
        assert similar.status_code == 200, f"GET /similar without Redis: {similar.status_code}"
        redis.start()

        wait_for(
            "every event applied after the restart",
            lambda: applied_all(d, len(items), len(stream)),
            timeout_s=120,
        )
        streamer.join(timeout=30)
        assert streamer.error is None, streamer.error
        log = log_text(f"{d.namespace}-w")
        assert log.count("retrying with backoff") == 1, log[-3000:]
        assert "store reachable again" in log
        after = get(d, "/feed/u1", k=10).json()
        assert after["degraded"] is False and after["items"]
        wait_for("/health ok again", d.healthy, timeout_s=30)
        print(f"degraded feeds: {degraded}, slowest {slowest * 1000:.0f} ms")

        _outage_with_traffic(d, redis, later)
        wait_for(
            "the events that came during the second outage",
            lambda: applied_all(d, len(items), len(interactions)),
            timeout_s=60,
        )
        assert worker.poll() is None
        now_s = time.time()
        assert_same_state(redis_state(d, now_s), ground_truth(d, items, interactions, now_s))
    finally:
        _teardown(d, [api_impressions], streamer)
        redis.kill()


def test_redis_restarted_empty_the_worker_rebuilds_the_state_from_the_log(
    kafka_bootstrap: str, redis_root: Path
) -> None:
    """Redis keeps nothing on disk: kill -9 it and it comes back empty.

    The worker sees that the store holds less than it applied, rewinds its partitions to the
    beginning of the log, applies the catalog first and then the interactions again: the
    final state is the ground truth, as if nothing had happened. Whether Redis died mid-stream,
    while the worker was idle, while events were arriving, or before the worker started.
    """
    redis = PrivateRedis(redis_root, persistent=False)
    redis.start()
    d = _redis_deployment(kafka_bootstrap, redis)
    items, interactions = simulated(31_000, seed=23)
    stream, later = interactions[:30_000], interactions[30_000:]
    streamer = Streamer(d, stream, per_s=8_000)
    losses = 0

    def rebuilt(what: str, events: list[Event], truth: dict[str, Any]) -> None:
        nonlocal losses
        wait_for(what, lambda: applied_all(d, len(items), len(events)), timeout_s=60)
        assert_same_state(redis_state(d, now_s), truth)
        log = log_text(f"{d.namespace}-w")
        losses += 1
        assert log.count("the store holds less than was applied") == losses, log[-3000:]

    try:
        worker = d.start_worker("w")
        Streamer(d, items, per_s=50_000).run()
        wait_for("the catalog", lambda: d.applied("items") == len(items), timeout_s=60)
        streamer.start()
        wait_for("a third of the stream", lambda: d.applied("interactions") > 10_000, 60)

        redis.kill()  # mid-stream
        time.sleep(1.0)
        redis.start()
        assert d.applied("interactions") < 10_000  # it did come back without its state
        streamer.join(timeout=30)
        assert streamer.error is None, streamer.error
        now_s = time.time()
        truth = ground_truth(d, items, stream, now_s)
        rebuilt("the stream applied again after a wipe mid-stream", stream, truth)

        # With the worker idle: nothing fails for it to notice, yet it does.
        redis.kill()
        redis.start()
        rebuilt("the stream applied again after a wipe while idle", stream, truth)

        # Events arrive while Redis is away, and it comes back empty.
        _outage_with_traffic(d, redis, later, down_s=1.0)
        truth = ground_truth(d, items, interactions, now_s)
        rebuilt("everything applied again, with what came during the outage", interactions, truth)
        assert worker.poll() is None

        # A worker started on a wiped store: the group's committed offsets give it away.
        stop(worker)
        redis.kill()
        redis.start()
        worker = d.start_worker("w")
        losses = 0  # a new log
        rebuilt("everything applied by a worker started on an empty store", interactions, truth)
    finally:
        _teardown(d, streamer=streamer)
        redis.kill()


# ------------------------------------------------------------------------------ (3) Kafka

#: The API's producer buffer in the Kafka test: small, so that an outage fills it at once.
BUFFER = 40
ITEMS = 60


def clicks(first: int, n: int, ts_ms: int) -> list[Interaction]:
    return [
        Interaction(
            event_id=f"e{k}",
            user_id=f"u{k % 7}",
            item_id=f"i{k % ITEMS}",
            type="click" if k % 3 else "view",
            ts=ts_ms + k,
        )
        for k in range(first, first + n)
    ]


def post_events(d: Deployment, events: Sequence[Event]) -> httpx.Response:
    body = b"[" + b",".join(encode(e) for e in events) + b"]"
    return httpx.post(
        f"{d.base}/events",
        content=body,
        headers={"content-type": "application/json"},
        timeout=15,
    )


def topic_event_ids(bootstrap: str, topic: str, expected: int) -> list[str]:
    """Every event id on ``topic``, read from the beginning outside any group."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"faults-reader-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    ids: list[str] = []
    deadline = time.monotonic() + 30
    idle_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = consumer.consume(500, timeout=0.5)
            got = [m for m in msgs if m.error() is None]
            ids += [orjson.loads(m.value() or b"{}")["event_id"] for m in got]
            idle_since = time.monotonic() if got else idle_since
            # Read past the expected count for a while: a duplicate would come after it.
            if len(ids) >= expected and time.monotonic() - idle_since > 2.0:
                break
    finally:
        consumer.close()
    return ids


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        return [max(p.offset, 0) for p in consumer.committed(parts, timeout=10)]
    finally:
        consumer.close()


def heartbeat(d: Deployment, worker: str) -> dict[str, Any]:
    store = RedisStore(d.redis_url)
    try:
        raw = store.hgetall(d.keys.workers()).get(worker)
    finally:
        store.close()
    return orjson.loads(raw) if raw else {}


def test_kafka_broker_down_posts_are_buffered_then_refused_and_none_is_lost(
    tmp_path: Path,
) -> None:
    """Stop the broker under the API and the worker, and start it again.

    While it is down, POST /events takes events into the producer's buffer (202) until the
    buffer is full, then answers 503 with Retry-After and takes nothing (not even part of a
    batch). Feeds keep coming, fast. A worker restarted during the outage resumes from the
    group's committed offsets. Once the broker is back, every accepted event is on the topic
    exactly once, none of the refused ones is, and the state is the ground truth.
    """
    kafka = PrivateKafka(tmp_path / "kafka")
    redis = PrivateRedis(tmp_path / "redis", persistent=True)
    with cleaned_up(tmp_path, kafka, redis):
        kafka.start()
        redis.start()
        d = Deployment(kafka.bootstrap, redis.url, partitions=3, env=FEATURES_ENV)
        with stopped_at_exit(d):
            _kafka_outage(d, kafka)


def _kafka_outage(d: Deployment, kafka: PrivateKafka) -> None:
    d.create_topics()
    api_impressions = f"{d.namespace}.api-impressions"
    create_topic(kafka.bootstrap, api_impressions)
    worker = d.start_worker("w")
    start_api(
        d,
        STREAMREC_KAFKA_CONFIG=orjson.dumps({"queue.buffering.max.messages": str(BUFFER)}).decode(),
        STREAMREC_TOPICS__IMPRESSIONS=api_impressions,
    )
    wait_for("the API and a live worker", d.healthy, timeout_s=60)
    ts = int(time.time() * 1000) - 60_000
    # The catalog first, as in production: what an interaction does depends on its item.
    catalog = [
        Item(item_id=f"i{n}", ts=ts, category=f"c{n % 5}", tags=[f"t{n % 7}"], created_at=ts)
        for n in range(ITEMS)
    ]
    produce(d, catalog)
    wait_for("the catalog", lambda: d.applied("items") == ITEMS, timeout_s=30)

    before = clicks(0, 30, ts)
    for n in range(0, 30, 10):
        assert post_events(d, before[n : n + 10]).status_code == 202
    wait_for("the first events", lambda: d.applied("interactions") == 30, timeout_s=30)
    group = d.env["STREAMREC_WORKER__GROUP_ID"]
    wait_for(
        "the worker's offsets committed",
        lambda: sum(committed_offsets(kafka.bootstrap, group, d.topics["interactions"], 3)) == 30,
        timeout_s=15,
    )

    kafka.stop()
    accepted: list[Interaction] = []
    refused: list[Interaction] = []
    k = 1_000

    def post(n: int) -> httpx.Response:
        nonlocal k
        events = clicks(k, n, ts)
        k += n
        response = post_events(d, events)
        (accepted if response.status_code == 202 else refused).extend(events)
        return response

    # The buffer takes events while the broker is away, one request at a time...
    assert all(post(1).status_code == 202 for _ in range(BUFFER - 2))
    # ... but a batch goes in whole or not at all: there is room for 2, not for 5, so none
    # of the 5 is taken (a client retrying the batch later duplicates nothing)...
    partial = post(5)
    assert partial.status_code == 503 and partial.json()["accepted"] == 0
    assert int(partial.headers["Retry-After"]) > 0
    # ... and the 2 places are still free.
    assert [post(1).status_code for _ in range(3)] == [202, 202, 503]
    assert len(accepted) == BUFFER
    # A batch that could never fit is not asked to come back.
    assert post(BUFFER + 1).status_code == 413

    # Feeds are still served, and fast: their impressions are dropped, never waited for.
    t0 = time.monotonic()
    feed = get(d, "/feed/u1", k=5)
    assert feed.status_code == 200 and time.monotonic() - t0 < 2.0

    def broker_gone() -> httpx.Response | None:
        response = get(d, "/health")
        return response if response.json()["transport"]["ok"] is False else None

    health = wait_for("/health to see the broker gone", broker_gone, timeout_s=20)
    assert health.status_code == 503
    assert f"{BUFFER} of {BUFFER} buffered" in health.json()["transport"]["detail"]

    # The worker dies and is restarted while the broker is away (under its name, so that
    # it takes its partitions back without waiting out the old member's session).
    worker.kill()
    worker.wait()
    worker = d.start_worker("w")
    time.sleep(2.0)

    kafka.start()
    wait_for(
        "every accepted event applied",
        lambda: d.applied("interactions") == len(before) + len(accepted),
        timeout_s=90,
    )
    ids = topic_event_ids(kafka.bootstrap, d.topics["interactions"], 30 + len(accepted))
    assert sorted(ids) == sorted(e.event_id for e in before + accepted)  # each once
    assert not {e.event_id for e in refused} & set(ids)
    # The restarted worker took up exactly where the group had committed.
    beat = wait_for(
        "the new worker's heartbeat",
        lambda: (
            (b := heartbeat(d, "w")).get("pid") == worker.pid
            and b["applied"] == len(accepted)
            and b
        ),
        timeout_s=10,
    )
    assert beat["skipped_duplicates"] == 0, beat

    # And the API takes events again once the buffer has drained.
    wait_for("/health ok", d.healthy, timeout_s=30)
    again = clicks(k, 3, ts)
    assert post_events(d, again).status_code == 202
    everything = before + accepted + again
    wait_for(
        "the last events",
        lambda: d.applied("interactions") == len(everything),
        timeout_s=30,
    )
    now_s = time.time()
    assert_same_state(redis_state(d, now_s), ground_truth(d, catalog, everything, now_s))


# ------------------------------------------------------------------------------ (4) serving


def index_status(d: Deployment) -> dict[str, Any] | None:
    try:
        response = get(d, "/health")
    except httpx.TransportError:
        return None  # not listening yet
    return dict(response.json()["index"], http=response.status_code)


def test_a_serving_process_restarts_from_its_snapshot_plus_the_topic_tail(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """kill -9 a serving process, add items, start it again.

    Its HNSW replica comes back from the snapshot plus the tail of the items topic: /health
    answers while it loads (``ready: false``, 503), then ``ready: true`` (200) with every item,
    old and new, and only the tail was applied from the topic. GET /similar works on both.
    """
    redis = PrivateRedis(tmp_path / "redis", persistent=True)
    with cleaned_up(tmp_path, redis):
        redis.start()
        d = Deployment(
            kafka_bootstrap,
            redis.url,
            partitions=3,
            env={"STREAMREC_SERVING__INDEX_SNAPSHOT_EVERY_S": "1"},
        )
        snapshots = Path(d.env["STREAMREC_SERVING__INDEX_SNAPSHOT_DIR"])
        try:
            d.create_topics()
            catalog, _ = simulated(0, seed=31, items=OLD_ITEMS + NEW_ITEMS)
            old, new = catalog[:OLD_ITEMS], catalog[OLD_ITEMS:]
            d.start_worker("w")
            api = start_api(d)
            produce(d, old)
            wait_for(
                "the replica to hold the first items",
                lambda: (s := index_status(d)) and s["ready"] and s["items"] == OLD_ITEMS,
                timeout_s=90,
            )
            wait_for(
                "a snapshot of all of them",
                lambda: len(HnswIndex.load(snapshots)[0]) == OLD_ITEMS,
                timeout_s=30,
            )
            api.kill()
            api.wait()
            produce(d, new)

            api = start_api(d, "api2")
            seen: list[dict[str, Any]] = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                status = index_status(d)
                if status is not None:
                    seen.append(status)
                    if status["ready"]:
                        break
                time.sleep(0.05)
            loading = [s for s in seen if not s["ready"]]
            assert loading, f"/health never reported the replica loading: {seen[:3]}"
            assert all(s["http"] == 503 for s in loading)
            assert {s["phase"] for s in loading} <= {"starting", "loading snapshot", "catching up"}
            ready = seen[-1]
            assert ready["ready"] and ready["phase"] == "ready", seen[-3:]
            assert ready["items"] == OLD_ITEMS + NEW_ITEMS
            assert ready["restored_from_snapshot"] is True
            assert ready["applied"] == NEW_ITEMS  # only the tail came from the topic
            wait_for("/health ok", d.healthy, timeout_s=30)
            print(
                f"loading answered {len(loading)} times, phases "
                f"{sorted({s['phase'] for s in loading})}"
            )
            for item in (old[0], new[-1]):
                similar = get(d, f"/similar/{item.item_id}", k=5)
                assert similar.status_code == 200
                assert len(similar.json()["items"]) == 5, similar.json()

            # A restart with nothing new on the topic is ready as well (an empty tail).
            stop(api)
            start_api(d, "api3")
            wait_for(
                "ready again with an empty tail",
                lambda: (s := index_status(d)) and s["ready"],
                timeout_s=60,
            )
            final = index_status(d)
            assert final is not None
            assert final["items"] == OLD_ITEMS + NEW_ITEMS and final["applied"] == 0, final
        finally:
            _teardown(d)


OLD_ITEMS, NEW_ITEMS = 3_000, 12_000
