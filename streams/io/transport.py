"""What the worker runtime needs from a transport: Kafka in production, a bus in embedded mode."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from streams.schema import Event

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message as it came off a topic, before decoding."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0
    headers: Mapping[str, bytes] = field(default_factory=dict)


class MessageSource(Protocol):
    """A consumer-group member that hands out batches and commits what was applied."""

    #: Changes whenever the member's partitions change hands (a rebalance).
    generation: int

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[RawMessage]:
        """Up to ``max_messages`` messages, waiting at most ``timeout_s`` for the first."""
        ...

    def commit(self, next_offsets: Mapping[TopicPartition, int]) -> None:
        """Record that every message before these offsets is applied."""
        ...

    def lag(self) -> dict[TopicPartition, int]:
        """Messages behind the end of each assigned partition, where known."""
        ...

    def close(self) -> None:
        """Leave the group."""
        ...


class EventSink(Protocol):
    """Where producers put events: :class:`streams.io.producer.EventProducer` or the bus."""

    def send(self, event: Event) -> None:
        """Queue ``event`` on its topic, keyed for partitioning."""
        ...

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for queued events; return how many are still undelivered."""
        ...


class RawSink(Protocol):
    """Where the dead-letter policy writes rejected bytes."""

    def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Mapping[str, bytes]
    ) -> None:
        """Queue raw bytes on ``topic``."""
        ...

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for queued messages; return how many are still undelivered."""
        ...
