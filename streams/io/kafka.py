"""Kafka at the edge: topic creation, the batch consumer source and the raw producer."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Collection, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    NewTopic,
    OffsetSpec,
)

from features.errors import TransportUnavailableError
from streams.io.partitioning import JAVA_PARTITIONER
from streams.io.transport import RawMessage
from streams.io.transport import TopicPartition as TP
from streams.settings import TopicSettings

log = logging.getLogger(__name__)


class ConnectionLog:
    """Logs one line when a client loses its broker and one when it gets it back.

    librdkafka reports every failed reconnect; without this, an unreachable broker at start-up
    would spam the log with identical lines.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.down_reason: str | None = None
        self._lock = threading.Lock()

    def on_error(self, err: KafkaError) -> None:
        """``error_cb`` for librdkafka clients."""
        with self._lock:
            if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
                if self.down_reason is None:
                    log.warning("%s: kafka unreachable (%s); retrying", self.what, err.str())
                self.down_reason = err.str()
            else:
                log.warning("%s: kafka error: %s", self.what, err.str())

    def mark_up(self) -> None:
        """Call when traffic flows again."""
        with self._lock:
            if self.down_reason is not None:
                log.info("%s: kafka reachable again", self.what)
            self.down_reason = None


def client_config(bootstrap: str, extra: Mapping[str, str]) -> dict[str, Any]:
    """Common librdkafka settings, with the user's extra properties (SASL, TLS, …) on top.

    librdkafka's own log would print a line per failed reconnect; every error also reaches
    ``error_cb`` (see :class:`ConnectionLog`), so its log is kept to critical messages.
    """
    return {"bootstrap.servers": bootstrap, "log_level": 2, **extra}


def create_topics(
    bootstrap: str, topics: TopicSettings, extra: Mapping[str, str], timeout_s: float = 30.0
) -> dict[str, str]:
    """Create streamrec's topics if missing; return topic → "created" | "exists".

    The items topic is compacted: it is the catalog's changelog, and a new serving replica
    rebuilds its index from it.
    """
    admin = AdminClient(client_config(bootstrap, extra))
    wanted = {
        topics.interactions: {},
        topics.impressions: {},
        topics.items: {"cleanup.policy": "compact"},
        topics.dead_letter: {"retention.ms": str(14 * 86_400_000)},
    }
    new = [
        NewTopic(
            name,
            num_partitions=topics.partitions,
            replication_factor=topics.replication,
            config=config,
        )
        for name, config in wanted.items()
    ]
    outcome: dict[str, str] = {}
    for name, future in admin.create_topics(new, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            outcome[name] = "created"
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            outcome[name] = "exists"
    return outcome


def _as_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def consume_batch(
    consumer: Consumer, connection: ConnectionLog, max_messages: int, timeout_s: float
) -> list[RawMessage]:
    """One ``consume`` call as RawMessages; transport errors are logged, never raised."""
    out: list[RawMessage] = []
    for msg in consumer.consume(num_messages=max_messages, timeout=timeout_s):
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("%s: consume error: %s", connection.what, err.str())
            continue
        raw_headers = msg.headers()
        headers: dict[str, bytes] = {}
        if raw_headers:
            pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
            headers = {name: _as_bytes(value) or b"" for name, value in pairs}
        out.append(
            RawMessage(
                msg.topic() or "",
                msg.partition() or 0,
                msg.offset() or 0,
                _as_bytes(msg.key()),
                _as_bytes(msg.value()),
                msg.timestamp()[1],
                headers,
            )
        )
    if out:
        connection.mark_up()
    return out


class KafkaSource:
    """A :class:`streams.io.transport.MessageSource` on a confluent-kafka consumer.

    Offsets are committed only after the batch's state is in the store (never automatically),
    so a crash replays from the last committed batch and the store's offset table skips what
    was already applied.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        group_id: str,
        extra: Mapping[str, str],
        instance_id: str | None = None,
    ) -> None:
        self.connection = ConnectionLog(f"consumer {group_id}")
        # A named worker is a static group member: restarted under the same name (after a
        # crash or a deploy) it takes its partitions back at once, without waiting for the
        # session timeout or rebalancing the others.
        static = {"group.instance.id": instance_id} if instance_id else {}
        config = (
            client_config(bootstrap, extra)
            | static
            | {
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "fetch.min.bytes": 1,
                "queued.max.messages.kbytes": 65536,
                "error_cb": self.connection.on_error,
            }
        )
        self._consumer = Consumer(config)
        # Ends of partitions this consumer does not fetch are asked on a connection of their
        # own, all in one request: on the consumer's, a ListOffsets queues behind the
        # fetch long-poll (fetch.wait.max.ms, 500 ms) at the broker, once per partition.
        self._admin_config = client_config(bootstrap, extra)
        self._admin: AdminClient | None = None
        self.assigned: set[TP] = set()
        self.generation = 0
        self._partitions: dict[str, list[int]] = {}
        self._partitions_at: dict[str, int] = {}
        self._consumer.subscribe(topics, on_assign=self._assigned, on_revoke=self._revoked)

    def _assigned(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        added = [(p.topic, p.partition) for p in partitions]
        self.assigned.update(added)
        self.generation += 1
        log.info("assigned %s", sorted(added))

    def _revoked(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        removed = {(p.topic, p.partition) for p in partitions}
        self.assigned -= removed
        self.generation += 1
        log.info("revoked %s", sorted(removed))

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[RawMessage]:
        """One ``consume`` call; transport errors are logged, never raised."""
        return consume_batch(self._consumer, self.connection, max_messages, timeout_s)

    def commit(self, next_offsets: Mapping[TP, int]) -> None:
        """Commit the given next offsets (asynchronously)."""
        if not next_offsets:
            return
        parts = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
        try:
            # Asynchronous: the store's offset table, not Kafka's, decides what is applied,
            # so a commit still in flight at a crash only means a longer replay to skip.
            self._consumer.commit(offsets=parts, asynchronous=True)
        except KafkaException as exc:
            # A lost commit only means replaying events the store's offset table will skip.
            log.warning("offset commit failed (will be retried with the next batch): %s", exc)

    # --- rewinding, for a worker whose store lost what it had applied (streams.worker.runtime) ---

    def committed(self, tps: Collection[TP]) -> dict[TP, int]:
        """The group's committed next offsets of ``tps`` (those it has); asks the broker."""
        if not tps:
            return {}
        parts = [TopicPartition(t, p) for t, p in sorted(tps)]
        try:
            found = self._consumer.committed(parts, timeout=10.0)
        except KafkaException as exc:
            raise TransportUnavailableError(f"kafka unreachable: {exc}") from None
        return {(p.topic, p.partition): p.offset for p in found if p.offset >= 0}

    def rewind(self, tp: TP, offset: int | None) -> None:
        """Consume ``tp`` again from ``offset`` (None: the log's beginning), and commit that.

        Messages fetched before the call are dropped by the consumer; the caller drops those it
        already holds. (A rewind to the beginning is committed by the first batch after it.)
        """
        topic, partition = tp
        part = TopicPartition(topic, partition, OFFSET_BEGINNING if offset is None else offset)
        try:
            try:
                self._consumer.seek(part)
            except KafkaException:
                # seek() wants a partition being fetched; one just assigned may not be yet.
                log.info("rewinding %s/%d by assigning it again", topic, partition)
                self._consumer.incremental_unassign([TopicPartition(topic, partition)])
                self._consumer.incremental_assign([part])
        except KafkaException as exc:
            raise TransportUnavailableError(f"cannot rewind {topic}/{partition}: {exc}") from None
        if offset is not None:
            self.commit({tp: offset})

    def pause(self, tps: Collection[TP]) -> None:
        """Stop fetching ``tps`` (their position stays where it is)."""
        parts = [TopicPartition(t, p) for t, p in sorted(tps) if (t, p) in self.assigned]
        if parts:
            self._consumer.pause(parts)

    def resume(self, tps: Collection[TP]) -> None:
        """Fetch ``tps`` again."""
        parts = [TopicPartition(t, p) for t, p in sorted(tps) if (t, p) in self.assigned]
        if parts:
            self._consumer.resume(parts)

    def high_watermarks(self, topic: str) -> dict[int, int]:
        """Next offset to be written of every partition of ``topic``: as the last fetch
        response had it for partitions this consumer fetches (no round trip), else from the
        broker."""
        try:
            if self._partitions_at.get(topic) != self.generation:
                metadata = self._consumer.list_topics(topic, timeout=10.0)
                self._partitions[topic] = sorted(metadata.topics[topic].partitions)
                self._partitions_at[topic] = self.generation
            out: dict[int, int] = {}
            for p in self._partitions[topic]:
                if (topic, p) in self.assigned:
                    part = TopicPartition(topic, p)
                    out[p] = self._consumer.get_watermark_offsets(part, cached=True)[1]
            unknown = [p for p in self._partitions[topic] if out.get(p, -1) < 0]
            out.update(self._ends(topic, unknown))
            return out
        except (KafkaException, KeyError) as exc:
            raise TransportUnavailableError(f"kafka unreachable: {exc}") from None

    def _ends(self, topic: str, partitions: list[int]) -> dict[int, int]:
        """High watermarks of ``partitions`` from the broker, in one ListOffsets request."""
        if not partitions:
            return {}
        if self._admin is None:
            self._admin = AdminClient(self._admin_config)
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        asked = {TopicPartition(topic, p): latest for p in partitions}
        futures = self._admin.list_offsets(asked, request_timeout=10.0)
        return {part.partition: future.result().offset for part, future in futures.items()}

    def lag(self) -> dict[TP, int]:
        """End offset minus position, from cached watermarks (no broker round trip)."""
        parts = [TopicPartition(t, p) for t, p in sorted(self.assigned)]
        if not parts:
            return {}
        out: dict[TP, int] = {}
        for part in self._consumer.position(parts):
            try:
                _low, high = self._consumer.get_watermark_offsets(part, cached=True)
            except KafkaException:
                continue
            if high >= 0 and part.offset >= 0:
                out[(part.topic, part.partition)] = max(0, high - part.offset)
        return out

    def close(self) -> None:
        """Leave the group cleanly so partitions move at once."""
        self._consumer.close()


class RawProducer:
    """A confluent-kafka producer: idempotent, batched, with delivery reports.

    It is the dead-letter sink, and the transport under :class:`streams.io.producer.EventProducer`.
    """

    def __init__(
        self,
        bootstrap: str,
        extra: Mapping[str, str],
        *,
        linger_ms: int = 5,
        name: str = "producer",
    ) -> None:
        self.connection = ConnectionLog(name)
        self.delivered = 0
        self.failed = 0
        # The Java client's partitioner unless the user's properties name another: a key
        # must land on the partition a JVM service's producer picks (streams.io.partitioning).
        config = (
            {"partitioner": JAVA_PARTITIONER}
            | client_config(bootstrap, extra)
            | {
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": linger_ms,
                "compression.type": "lz4",
                "error_cb": self.connection.on_error,
            }
        )
        #: How many messages the local buffer holds (librdkafka's default unless configured).
        self.capacity = int(config.get("queue.buffering.max.messages", 100_000))
        self._queued = 0  # produced, delivery not reported yet
        self._count = threading.Lock()
        self._producer = Producer(config)

    @property
    def queued(self) -> int:
        """Messages in the local buffer: produced, their delivery not reported yet."""
        return self._queued

    def _delivered(self, err: KafkaError | None, _msg: Any) -> None:
        with self._count:
            self._queued -= 1
        if err is None:
            self.delivered += 1
            if self.connection.down_reason is not None:
                self.connection.mark_up()
            return
        self.failed += 1
        log.error("delivery failed: %s", err.str())

    def send_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Mapping[str, bytes],
        *,
        wait_s: float = 5.0,
    ) -> None:
        """Queue one message. When the local buffer is full, wait up to ``wait_s`` for room,
        then raise TransportUnavailableError: the message was not taken."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=list(headers.items()) or None,
                    on_delivery=self._delivered,
                )
            except BufferError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TransportUnavailableError(
                        f"kafka producer buffer is full ({self.queued} messages waiting): "
                        "the broker is unreachable or not keeping up"
                    ) from None
                self._producer.poll(min(0.1, remaining))
                continue
            with self._count:
                self._queued += 1
            self._producer.poll(0)
            return

    def poll(self, timeout_s: float) -> None:
        """Serve delivery reports, waiting up to ``timeout_s`` for one."""
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for delivery; return the number of messages still queued."""
        self._producer.flush(timeout_s)
        return self.queued

    def list_topics(self, timeout_s: float) -> set[str]:
        """Topic names the broker reports (a reachability probe)."""
        try:
            metadata = self._producer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise TransportUnavailableError(f"kafka unreachable: {exc}") from None
        return set(metadata.topics)


class BrokerProbe:
    """Answers "is the broker reachable?" for /health, at most one metadata call per ``ttl_s``."""

    def __init__(self, producer: RawProducer, ttl_s: float = 5.0, timeout_s: float = 1.0) -> None:
        self.producer = producer
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._checked_at = float("-inf")
        self._answer: tuple[bool, str] = (False, "not checked yet")
        self._lock = threading.Lock()

    def __call__(self) -> tuple[bool, str]:
        with self._lock:
            now = time.monotonic()
            if now - self._checked_at >= self.ttl_s:
                try:
                    count = len(self.producer.list_topics(self.timeout_s))
                    self._answer = (True, f"reachable ({count} topics)")
                except TransportUnavailableError as exc:
                    self._answer = (False, str(exc))
                self._checked_at = now
            ok, detail = self._answer
        # Delivery reports are otherwise served only at the next produce: an idle API would
        # report messages the broker acknowledged minutes ago as still waiting.
        self.producer.poll(0)
        queued = self.producer.queued
        if queued:
            detail += f"; {queued} of {self.producer.capacity} buffered events await delivery"
        return ok, detail


class KafkaTailSource:
    """Reads every partition of one topic from given offsets, outside any consumer group.

    Each serving process keeps its own index replica, so it must see the whole items topic
    (not a group's share of it) and it tracks its own positions in its snapshots.
    """

    def __init__(
        self, bootstrap: str, topic: str, extra: Mapping[str, str], start: Mapping[int, int]
    ) -> None:
        self.connection = ConnectionLog(f"replica of {topic}")
        # The Java client's partitioner unless the user's properties name another: a key
        # must land on the partition a JVM service's producer picks (streams.io.partitioning).
        config = (
            {"partitioner": JAVA_PARTITIONER}
            | client_config(bootstrap, extra)
            | {
                "group.id": f"streamrec-replica-{uuid.uuid4().hex}",  # required, never joined
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "error_cb": self.connection.on_error,
            }
        )
        self._consumer = Consumer(config)
        self.generation = 0
        self.topic = topic
        self._start = dict(start)
        self._assigned = False
        self._lag_checked = float("-inf")
        self._lag: dict[TP, int] = {}

    def _assign(self) -> bool:
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=5.0)
        except KafkaException:
            return False
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            return False
        parts = [
            TopicPartition(self.topic, p, self._start.get(p, OFFSET_BEGINNING))
            for p in sorted(topic.partitions)
        ]
        self._consumer.assign(parts)
        self._assigned = True
        return True

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[RawMessage]:
        """The next messages; none until the topic exists."""
        if not self._assigned and not self._assign():
            time.sleep(timeout_s)
            return []
        return consume_batch(self._consumer, self.connection, max_messages, timeout_s)

    def commit(self, next_offsets: Mapping[TP, int]) -> None:
        """Positions live in the replica's snapshots, not in Kafka."""

    def lag(self) -> dict[TP, int]:
        """Messages behind the end of each partition (asks the broker at most once a second)."""
        if not self._assigned:
            return {(self.topic, -1): 1}  # not even assigned: certainly not caught up
        now = time.monotonic()
        if now - self._lag_checked < 1.0:
            return self._lag
        self._lag_checked = now
        lag: dict[TP, int] = {}
        for part in self._consumer.position(self._consumer.assignment()):
            try:
                # The fetcher keeps the high watermarks cached; asking the broker (one round
                # trip per partition) would stall the replica's apply loop.
                low, high = self._consumer.get_watermark_offsets(part, cached=True)
                if high < 0:  # nothing fetched yet for this partition: ask once
                    low, high = self._consumer.get_watermark_offsets(part, timeout=2.0)
            except KafkaException:
                return self._lag
            # Nothing consumed yet: the position is where the partition was assigned from (a
            # snapshot's offset; an empty tail must not look like a whole partition to read).
            start = self._start.get(part.partition, low)
            position = part.offset if part.offset >= 0 else max(start, low)
            lag[(part.topic, part.partition)] = max(0, high - position)
        self._lag = lag
        return lag

    def close(self) -> None:
        """Release the consumer."""
        self._consumer.close()
