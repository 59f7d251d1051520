"""The live-state store protocol. Both implementations pass the same contract suite."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from features.batch import WriteBatch
from features.sharding import RoutedBatch, ShardLayout


@runtime_checkable
class Store(Protocol):
    """Where live state lives: Redis in production, a dict in the embedded mode and tests.

    Writes happen only through :meth:`commit`, all-or-nothing; a batch whose guards no longer
    hold raises :class:`features.errors.ConflictError` and writes nothing. Reads are small and
    batched.
    Every method raises :class:`features.errors.StoreUnavailableError` when the backend is down.
    """

    def commit(self, batch: WriteBatch) -> None:
        """Apply every write of ``batch`` atomically, in order."""
        ...

    def top(self, key: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` highest-scored members, best first; ties by member, descending."""
        ...

    def top_many(self, keys: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """:meth:`top` of several keys, in one round trip where the backend allows."""
        ...

    def lowest(self, key: str, max_score: float, limit: int) -> list[tuple[str, float]]:
        """Up to ``limit`` members scored at most ``max_score``, lowest first; ties by member."""
        ...

    def zscores(self, key: str, members: Sequence[str]) -> list[float | None]:
        """Each member's score, or None when absent."""
        ...

    def values_and_tops(
        self, value_keys: Sequence[str], top_keys: Sequence[str], k: int
    ) -> tuple[list[bytes | None], list[list[tuple[str, float]]]]:
        """:meth:`get_bytes` of some keys and :meth:`top_many` of others, in one round trip
        where the backend allows (a feed's user state)."""
        ...

    def zscores_each(self, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        """The score of each (key, member), None when absent, in one round trip where the
        backend allows."""
        ...

    def zscores_many(self, keys: Sequence[str], members: Sequence[str]) -> list[list[float | None]]:
        """:meth:`zscores` of several keys for the same members, in one round trip where the
        backend allows."""
        ...

    def zcard(self, key: str) -> int:
        """Number of members of a sorted set."""
        ...

    def hgetall(self, key: str) -> dict[str, str]:
        """All fields of a hash (empty when absent)."""
        ...

    def hgetall_many(self, keys: Sequence[str]) -> list[dict[str, str]]:
        """:meth:`hgetall` of several hashes, in one round trip where the backend allows."""
        ...

    def hget_many(self, keys: Sequence[str], field: str) -> list[str | None]:
        """One field of many hashes, None where absent."""
        ...

    def get_bytes(self, keys: Sequence[str]) -> list[bytes | None]:
        """Plain values, None where absent."""
        ...

    def ttl(self, key: str) -> int | None:
        """Seconds left to live; None for a key with no expiry or no key."""
        ...

    def dump(self, prefix: str) -> dict[str, object]:
        """Every key under ``prefix``: zsets and hashes as dicts, values as bytes."""
        ...

    def ping(self) -> bool:
        """True when the backend answers."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class PendingCommits(Protocol):
    """A store whose commits can be left half-way by a crash, to be finished before the
    checkpoint is read (a namespace split into shards: :mod:`features.stores.redis_sharded`)."""

    def settle(self) -> int:
        """Finish every commit left half-way; return how many there were."""
        ...


@runtime_checkable
class ShardableStore(Store, Protocol):
    """A store that can commit a batch spanning several slots, exactly once per slot."""

    def commit_sharded(self, routed: RoutedBatch, layout: ShardLayout) -> None:
        """Apply a routed batch: its guards and home writes, then each shard's writes."""
        ...

    def settle_sharded(self, layout: ShardLayout) -> int:
        """Finish the batches decided but not applied in every shard; return how many."""
        ...
