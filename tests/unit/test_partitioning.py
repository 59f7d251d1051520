"""The Java client's partitioner: Kafka's murmur2 test vectors, and the bus agrees with it."""

from __future__ import annotations

import pytest

from streams.io.bus import InProcessBus
from streams.io.partitioning import murmur2, partition_for
from streams.schema import Interaction, event_key
from streams.settings import TopicSettings

# org.apache.kafka.common.utils.UtilsTest#testMurmur2
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("data", "expected"), sorted(KAFKA_VECTORS.items()))
def test_murmur2_matches_kafkas_own_test_vectors(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_partitions_are_the_positive_hash_modulo_the_count() -> None:
    for n in range(200):
        key = f"user-{n}".encode()
        assert partition_for(key, 7) == (murmur2(key) & 0x7FFFFFFF) % 7
    assert partition_for(b"", 3) == (murmur2(b"") & 0x7FFFFFFF) % 3
    with pytest.raises(ValueError, match="partitions"):
        partition_for(b"x", 0)


def test_the_in_process_bus_puts_a_key_where_the_java_client_would() -> None:
    topics = TopicSettings()
    bus = InProcessBus(partitions=6, topics=topics)
    events = [
        Interaction(event_id=f"e{n}", user_id=f"u{n}", item_id="i", type="click", ts=n)
        for n in range(50)
    ]
    for event in events:
        bus.send(event)
    for message in bus.read(topics.interactions):
        assert message.key is not None
        assert message.partition == partition_for(message.key, 6)
    assert {event_key(e) for e in events} == {m.key for m in bus.read(topics.interactions)}
