"""The producer SDK that services import to send events to streamrec.

Usage (needs a broker; the integration tests run it)::

    with EventProducer("localhost:9092") as producer:
        producer.send(Interaction(event_id="e1", user_id="u1", item_id="i1",
                                  type="click", ts=1_700_000_000_000))
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

from streams.kafka_io import RawProducer
from streams.schema import Event, Impression, Item, encode, event_key
from streams.settings import TopicSettings


def topic_for(event: Event, topics: TopicSettings) -> str:
    """The topic an event belongs on."""
    if isinstance(event, Item):
        return topics.items
    if isinstance(event, Impression):
        return topics.impressions
    return topics.interactions


class EventProducer:
    """Sends schema events to their topics, keyed for partitioning; a context manager."""

    def __init__(
        self,
        bootstrap: str,
        topics: TopicSettings | None = None,
        extra: Mapping[str, str] | None = None,
        *,
        linger_ms: int = 5,
    ) -> None:
        self.topics = topics or TopicSettings()
        self.raw = RawProducer(bootstrap, extra or {}, linger_ms=linger_ms, name="event producer")

    def send(self, event: Event) -> None:
        """Queue one event. Raises TransportUnavailableError when the local buffer stays full."""
        self.raw.send_raw(topic_for(event, self.topics), event_key(event), encode(event), {})

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for delivery; return how many events are still undelivered."""
        return self.raw.flush(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush everything queued."""
        self.flush(timeout_s)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
