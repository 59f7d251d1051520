"""The producer SDK that services import to send events to streamrec.

Usage (needs a broker; the integration tests run it)::

    with EventProducer("localhost:9092") as producer:
        producer.send(Interaction(event_id="e1", user_id="u1", item_id="i1",
                                  type="click", ts=1_700_000_000_000))

While the broker is unreachable, events wait in the producer's local buffer and are retried
until it is back: they are never given up on (``message.timeout.ms`` is 0 unless configured),
and the idempotent producer writes each of them to its topic once. When the buffer is full,
an event is refused with :class:`features.errors.TransportUnavailableError` rather than
taken: a caller always knows whether it was.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType

from features.errors import TransportUnavailableError
from streams.io.kafka import RawProducer
from streams.schema import Event, Impression, Item, encode, event_key
from streams.settings import TopicSettings

log = logging.getLogger(__name__)


def topic_for(event: Event, topics: TopicSettings) -> str:
    """The topic an event belongs on."""
    if isinstance(event, Item):
        return topics.items
    if isinstance(event, Impression):
        return topics.impressions
    return topics.interactions


class EventProducer:
    """Sends schema events to their topics, keyed for partitioning; a context manager.

    ``max_wait_s`` is how long :meth:`send` waits for room in a full buffer before it refuses
    an event. Impressions never wait: a served feed must not stall on Kafka, and a feed whose
    impression cannot be logged is still worth serving.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: TopicSettings | None = None,
        extra: Mapping[str, str] | None = None,
        *,
        linger_ms: int = 5,
        max_wait_s: float = 5.0,
    ) -> None:
        self.topics = topics or TopicSettings()
        # Buffer and retry for as long as the broker is away; a full buffer refuses instead.
        config = {"message.timeout.ms": "0", **(extra or {})}
        self.raw = RawProducer(bootstrap, config, linger_ms=linger_ms, name="event producer")
        self.max_wait_s = max_wait_s
        # Room is checked and taken under one lock, so that a batch goes in whole.
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        """Events the local buffer holds."""
        return self.raw.capacity

    def send(self, event: Event, *, wait_s: float | None = None) -> None:
        """Queue one event. Raises TransportUnavailableError when the local buffer stays full
        for ``wait_s`` (default ``max_wait_s``; impressions: 0)."""
        if wait_s is None:
            wait_s = 0.0 if isinstance(event, Impression) else self.max_wait_s
        with self._lock:
            self._send(event, wait_s)

    def send_many(self, events: Sequence[Event], *, wait_s: float | None = None) -> None:
        """Queue every one of ``events``, or none of them.

        Waits up to ``wait_s`` (default ``max_wait_s``) for the buffer to have room for all,
        then raises TransportUnavailableError with nothing queued, so that a client may send
        the same batch again without duplicating any of it.
        """
        wait = self.max_wait_s if wait_s is None else wait_s
        capacity = self.raw.capacity
        if len(events) > capacity:
            raise TransportUnavailableError(
                f"{len(events)} events do not fit the producer's buffer of {capacity}"
            )
        deadline = time.monotonic() + wait
        while True:
            with self._lock:
                if self.raw.queued + len(events) <= capacity:
                    for event in events:
                        self._send(event, wait)
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportUnavailableError(
                    f"kafka producer buffer is full ({self.raw.queued} of {capacity} events "
                    "await delivery): the broker is unreachable or not keeping up"
                )
            self.raw.poll(min(0.1, remaining))  # serves delivery reports, which make room

    def _send(self, event: Event, wait_s: float) -> None:
        topic = topic_for(event, self.topics)
        self.raw.send_raw(topic, event_key(event), encode(event), {}, wait_s=wait_s)

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for delivery; return how many events are still undelivered."""
        return self.raw.flush(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush everything queued; say so if some events could not be delivered."""
        undelivered = self.flush(timeout_s)
        if undelivered:
            log.error(
                "%d accepted events are still undelivered after %.0f s (kafka unreachable?) "
                "and are lost with this process",
                undelivered,
                timeout_s,
            )

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
