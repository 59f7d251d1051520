"""The in-process event bus of the embedded mode: partitioned append-only logs with offsets.

It behaves like a tiny Kafka (keyed partitioning, per-group committed offsets, bounded
retention), so the worker runtime and the processors run unchanged on it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping

from streams.io.partitioning import partition_for
from streams.io.transport import RawMessage, TopicPartition
from streams.schema import Event, Impression, Item, encode, event_key
from streams.settings import TopicSettings


class _Partition:
    def __init__(self, retention: int) -> None:
        self.log: deque[RawMessage] = deque(maxlen=retention)
        self.next_offset = 0

    def first_offset(self) -> int:
        return self.log[0].offset if self.log else self.next_offset


class InProcessBus:
    """Topics of partitions held in memory; thread-safe.

    Examples:
        >>> bus = InProcessBus(partitions=2)
        >>> bus.send_raw("t", b"k", b"v", {})
        >>> source = bus.source(["t"], group="g")
        >>> [m.value for m in source.poll_batch(10, 0.0)]
        [b'v']
    """

    def __init__(
        self, partitions: int = 4, retention: int = 200_000, topics: TopicSettings | None = None
    ) -> None:
        self.partitions = partitions
        self.retention = retention
        self.topics = topics or TopicSettings()
        self._logs: dict[str, list[_Partition]] = {}
        self._committed: dict[tuple[str, TopicPartition], int] = {}
        self._cond = threading.Condition()
        self._round_robin = 0

    def _topic(self, topic: str) -> list[_Partition]:
        parts = self._logs.get(topic)
        if parts is None:
            parts = self._logs[topic] = [_Partition(self.retention) for _ in range(self.partitions)]
        return parts

    def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Mapping[str, bytes]
    ) -> None:
        """Append a message to the partition the Java client would pick for its key."""
        with self._cond:
            parts = self._topic(topic)
            if key:
                index = partition_for(key, len(parts))
            else:
                self._round_robin += 1
                index = self._round_robin % len(parts)
            part = parts[index]
            part.log.append(
                RawMessage(
                    topic,
                    index,
                    part.next_offset,
                    key,
                    value,
                    int(time.time() * 1000),
                    dict(headers),
                )
            )
            part.next_offset += 1
            self._cond.notify_all()

    def send(self, event: Event) -> None:
        """Encode an event and append it to its topic, as the Kafka producer would."""
        if isinstance(event, Item):
            topic = self.topics.items
        elif isinstance(event, Impression):
            topic = self.topics.impressions
        else:
            topic = self.topics.interactions
        self.send_raw(topic, event_key(event), encode(event), {})

    def flush(self, timeout_s: float = 10.0) -> int:
        """Nothing is ever in flight."""
        return 0

    def read(self, topic: str) -> list[RawMessage]:
        """Every retained message of a topic, partition by partition (for inspection and tests)."""
        with self._cond:
            return [m for part in self._topic(topic) for m in part.log]

    def source(self, topics: list[str], group: str) -> BusSource:
        """A consumer of ``topics`` in consumer group ``group`` (one member per group)."""
        return BusSource(self, topics, group)

    def tail_source(self, topic: str, start: Mapping[int, int]) -> BusSource:
        """A reader of a whole topic from given offsets (per partition), outside any group."""
        source = BusSource(self, [topic], group=f"tail-{id(start)}-{time.monotonic_ns()}")
        source._positions.update({(topic, p): offset for p, offset in start.items()})
        return source

    def _poll(
        self,
        topics: list[str],
        group: str,
        positions: dict[TopicPartition, int],
        max_messages: int,
        timeout_s: float,
    ) -> list[RawMessage]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                out = self._collect(topics, group, positions, max_messages)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                self._cond.wait(remaining)

    def _collect(
        self,
        topics: list[str],
        group: str,
        positions: dict[TopicPartition, int],
        max_messages: int,
    ) -> list[RawMessage]:
        # Like a Kafka consumer: start from the group's committed offset (or the oldest
        # retained message), then advance a private position as messages are handed out.
        out: list[RawMessage] = []
        for topic in topics:
            for index, part in enumerate(self._topic(topic)):
                tp = (topic, index)
                if tp not in positions:
                    positions[tp] = self._committed.get((group, tp), 0)
                first = part.first_offset()
                start = max(positions[tp], first) - first
                end = min(len(part.log), start + max_messages - len(out))
                out.extend(part.log[i] for i in range(start, end))
                positions[tp] = first + end if end > start else max(positions[tp], first)
                if len(out) >= max_messages:
                    return out
        return out

    def _commit(self, group: str, next_offsets: Mapping[TopicPartition, int]) -> None:
        with self._cond:
            for tp, offset in next_offsets.items():
                self._committed[(group, tp)] = offset

    def _lag(
        self, topics: list[str], group: str, positions: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        with self._cond:
            return {
                (topic, i): part.next_offset
                - max(positions.get((topic, i), 0), self._committed.get((group, (topic, i)), 0))
                for topic in topics
                for i, part in enumerate(self._topic(topic))
            }


class BusSource:
    """A :class:`streams.io.transport.MessageSource` over an :class:`InProcessBus`."""

    def __init__(self, bus: InProcessBus, topics: list[str], group: str) -> None:
        self._bus, self._topics, self._group = bus, topics, group
        self._positions: dict[TopicPartition, int] = {}
        self.generation = 0  # one member per group: its partitions never move

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[RawMessage]:
        """The next messages after this member's position, oldest first per partition."""
        return self._bus._poll(self._topics, self._group, self._positions, max_messages, timeout_s)

    def commit(self, next_offsets: Mapping[TopicPartition, int]) -> None:
        """Advance the group's positions."""
        self._bus._commit(self._group, next_offsets)

    def lag(self) -> dict[TopicPartition, int]:
        """Messages not yet handed out (nor committed) per partition."""
        return self._bus._lag(self._topics, self._group, self._positions)

    def close(self) -> None:
        """Nothing to release."""
