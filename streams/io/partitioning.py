"""Key → partition the way the Java client does it, so every producer agrees.

Duplicate detection, per-user ordering and the exactly-once guards are all per partition: a
user's events must land on one partition whichever client produced them. The Java producer
(and so most services that emit events) picks ``toPositive(murmur2(key)) % partitions``;
librdkafka's default is CRC32. streamrec's producers therefore set librdkafka's
``murmur2_random`` partitioner (the same hash; random only for a null key, which streamrec
never sends), and the in-process bus uses :func:`partition_for` below, so the embedded demo,
Kafka, kcat with ``-X partitioner=murmur2_random`` and a JVM service all agree.
"""

from __future__ import annotations

#: librdkafka's name of the Java-compatible partitioner.
JAVA_PARTITIONER = "murmur2_random"

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 of ``data`` as a signed int, as ``Utils.murmur2`` returns it.

    Examples:
        >>> murmur2(b"21"), murmur2(b"foobar"), murmur2(b"abc")
        (-973932308, -790332482, 479470107)
    """
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length % 4
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the Java producer picks for ``key`` among ``partitions``.

    Examples:
        >>> [partition_for(k, 6) for k in (b"u1", b"u2", b"u3")]
        [4, 0, 4]
    """
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
