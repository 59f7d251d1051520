"""The moving parts of `bench freshness`: probe bookkeeping, the watcher, the bare consumer
baseline, and the load generator (threads of the bench process)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import redis
from confluent_kafka import Consumer, TopicPartition

from features.keys import Keys
from streamrec.bench.latency import latency_figures
from streamrec.settings import Settings
from streams.io.kafka import client_config
from streams.io.producer import EventProducer
from streams.io.replica import IndexReplica
from streams.schema import Interaction, Item

log = logging.getLogger(__name__)

#: Seconds between two polls of the watcher (and between two pacing ticks of the load).
POLL_S = 0.001
TICK_S = 0.005


@dataclass
class Probes:
    """Send and detection times (``perf_counter`` seconds), shared by the threads."""

    sent: dict[str, float] = field(default_factory=dict)
    visible: dict[str, float] = field(default_factory=dict)
    in_kafka: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pending(self) -> list[str]:
        with self.lock:
            return [key for key in self.sent if key not in self.visible]

    def latencies(self, seen: dict[str, float]) -> list[float]:
        return [seen[k] - t for k, t in self.sent.items() if k in seen]

    def figures(self, prefix: str, seen: dict[str, float]) -> dict[str, float | None]:
        found = self.latencies(seen)
        return latency_figures(prefix, found, missing=len(self.sent) - len(found))


class Watcher(threading.Thread):
    """Polls Redis for the probes and the replica for the new items, every :data:`POLL_S`."""

    def __init__(
        self,
        settings: Settings,
        probes: Probes,
        items: Probes,
        replica: IndexReplica,
        backlog: Callable[[], int],
    ) -> None:
        super().__init__(name="freshness-watcher", daemon=True)
        self.keys = Keys(settings.namespace)
        self.trending_key = self.keys.trending(settings.features.half_lives_s[0])
        # What the API reads: the replica when one is configured, so its lag counts too.
        self.client = redis.Redis.from_url(settings.redis_replica_url or settings.redis_url)
        self.probes, self.items, self.replica = probes, items, replica
        self.backlog = backlog
        self.backlog_samples: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        next_sample = time.perf_counter()
        try:
            while not self.stop.is_set():
                self._poll_probes()
                self._poll_items()
                if time.perf_counter() >= next_sample:
                    self.backlog_samples.append(self.backlog())
                    next_sample += 0.1
                time.sleep(POLL_S)
        finally:
            self.client.close()

    def _poll_probes(self) -> None:
        users = self.probes.pending()
        if not users:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.zmscore(self.trending_key, [probe_item(u) for u in users])
        for user in users:
            pipe.exists(self.keys.session_embedding(user))
        scores, *sessions = pipe.execute()
        seen_at = time.perf_counter()
        with self.probes.lock:
            for user, score, session in zip(users, scores, sessions, strict=True):
                if score is not None and session:
                    self.probes.visible[user] = seen_at

    def _poll_items(self) -> None:
        for item_id in self.items.pending():
            if item_id in self.replica.index:
                with self.items.lock:
                    self.items.visible[item_id] = time.perf_counter()


class BareTail(threading.Thread):
    """The baseline: a plain consumer on every partition, noting when each probe arrives."""

    def __init__(
        self, settings: Settings, start: dict[tuple[str, int], int], probes: Probes, items: Probes
    ) -> None:
        super().__init__(name="freshness-bare-consumer", daemon=True)
        self.consumer = Consumer(
            client_config(settings.kafka_bootstrap, settings.kafka_config)
            | {"group.id": f"{settings.worker.group_id}-bare", "enable.auto.commit": False}
        )
        self.consumer.assign([TopicPartition(t, p, o) for (t, p), o in start.items()])
        self.interactions = settings.topics.interactions
        self.probes, self.items = probes, items
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                msg = self.consumer.poll(0.05)  # returns as soon as one message is there
                if msg is None or msg.error() is not None:
                    continue
                key = msg.key()
                if key is None or not key.startswith((b"probe-user-", b"fresh-item-")):
                    continue
                now = time.perf_counter()
                target = self.probes if msg.topic() == self.interactions else self.items
                target.in_kafka.setdefault(key.decode(), now)
        finally:
            self.consumer.close()


class Load(threading.Thread):
    """Sends pre-generated simulator events at ``rate`` per second with event time = now."""

    def __init__(self, settings: Settings, events: list[Interaction | Item], rate: float) -> None:
        super().__init__(name="freshness-load", daemon=True)
        self.producer = EventProducer(
            settings.kafka_bootstrap, settings.topics, settings.kafka_config
        )
        self.events, self.rate = events, rate
        self.sent = 0
        self.elapsed_s = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.perf_counter()
        try:
            while not self.stop.is_set() and self.sent < len(self.events):
                elapsed = time.perf_counter() - started
                due = min(int(self.rate * elapsed), len(self.events))
                now_ms = int(time.time() * 1000)
                while self.sent < due:
                    event = msgspec.structs.replace(self.events[self.sent], ts=now_ms)
                    self.producer.send(event)
                    self.sent += 1
                time.sleep(max(0.0, started + elapsed + TICK_S - time.perf_counter()))
            self.elapsed_s = time.perf_counter() - started
        finally:
            self.producer.close()


def probe_item(user: str) -> str:
    return "probe-item-" + user.removeprefix("probe-user-")
