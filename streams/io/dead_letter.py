"""The one policy for rejected messages: log where it came from and why, then dead-letter it."""

from __future__ import annotations

import logging
import time
from collections import Counter

from streams.io.transport import RawMessage, RawSink

log = logging.getLogger(__name__)

#: Headers a dead-lettered message carries; its key and value are the original bytes.
SOURCE_TOPIC = "x-source-topic"
SOURCE_PARTITION = "x-source-partition"
SOURCE_OFFSET = "x-source-offset"
REASON = "x-reason"
REJECTED_AT = "x-rejected-at-ms"


class DeadLetterPolicy:
    """Sends rejected messages, untouched, to the dead-letter topic with their origin and reason.

    Examples:
        >>> from streams.io.bus import InProcessBus
        >>> bus = InProcessBus(partitions=1)
        >>> policy = DeadLetterPolicy(bus, "dlq")
        >>> policy.reject(RawMessage("in", 0, 7, b"k", b"{oops"), "malformed JSON")
        >>> msg = bus.read("dlq")[0]
        >>> msg.value, msg.headers["x-reason"], msg.headers["x-source-offset"]
        (b'{oops', b'malformed JSON', b'7')
    """

    def __init__(self, sink: RawSink, topic: str) -> None:
        self.sink = sink
        self.topic = topic
        self.counts: Counter[str] = Counter()
        self._unflushed = 0

    def reject(self, msg: RawMessage, reason: str) -> None:
        """Log and dead-letter one message; never raises for a bad message."""
        log.warning(
            "rejected message topic=%s partition=%d offset=%d reason=%s",
            msg.topic,
            msg.partition,
            msg.offset,
            reason,
            extra={"topic": msg.topic, "partition": msg.partition, "offset": msg.offset},
        )
        self.counts[msg.topic] += 1
        self._unflushed += 1
        self.sink.send_raw(
            self.topic,
            msg.key,
            msg.value,
            {
                SOURCE_TOPIC: msg.topic.encode(),
                SOURCE_PARTITION: str(msg.partition).encode(),
                SOURCE_OFFSET: str(msg.offset).encode(),
                REASON: reason.encode(),
                REJECTED_AT: str(int(time.time() * 1000)).encode(),
            },
        )

    @property
    def total(self) -> int:
        """Messages rejected so far."""
        return sum(self.counts.values())

    def flush(self) -> int:
        """Make sure every rejected message reached the dead-letter topic."""
        if not self._unflushed:
            return 0
        remaining = self.sink.flush()
        self._unflushed = remaining
        return remaining
