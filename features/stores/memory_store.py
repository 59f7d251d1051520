"""The in-memory store of the embedded mode and the unit tests. Same semantics as Redis."""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from features.batch import (
    Delete,
    Expire,
    HSet,
    HSetNX,
    Op,
    SetBytes,
    WriteBatch,
    ZAdd,
    ZIncrBy,
    ZKeepTop,
    ZRem,
    ZRemBelow,
    ZScale,
    ZScalePrefix,
)
from features.errors import ConflictError
from features.sharding import RoutedBatch, ShardLayout, renamed


def _rank_key(item: tuple[str, float]) -> tuple[float, bytes]:
    # Redis orders equal scores by member bytes; descending reads reverse both.
    return (item[1], item[0].encode())


def _descending(member: str) -> tuple[int, ...]:
    """A key that sorts members in *descending* byte order (a proper prefix after its
    extensions, as in ``b"ab" > b"a"``), for the ascending max-heap of :meth:`top`."""
    return (*(255 - b for b in member.encode()), 256)


#: Sorted sets up to this size are sorted whole on read; larger ones keep a lazy max-heap.
_SMALL_ZSET = 256


class InMemoryStore:
    """A thread-safe dict-backed :class:`features.store.Store`.

    Examples:
        >>> from features.batch import WriteBatch
        >>> store, batch = InMemoryStore(), WriteBatch()
        >>> batch.zincrby("pop", "a", 2.0); batch.zincrby("pop", "b", 5.0)
        >>> store.commit(batch)
        >>> store.top("pop", 1)
        [('b', 5.0)]
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._zsets: dict[str, dict[str, float]] = {}
        self._hashes: dict[str, dict[str, str]] = {}
        self._values: dict[str, bytes] = {}
        self._expiry: dict[str, float] = {}
        # Min-heaps of (score, member bytes, member) for keys read with lowest(): entries go
        # stale when a member is removed or rescored and are skipped when met.
        self._low: dict[str, list[tuple[float, bytes, str]]] = {}
        # Max-heaps of (−score, descending member key, member) for large keys read with
        # top(), stale entries skipped the same way: the popularity and trending sets are
        # read on every feed and written on every batch.
        self._high: dict[str, list[tuple[float, tuple[int, ...], str]]] = {}

    def commit(self, batch: WriteBatch) -> None:
        """Apply the batch under one lock, so readers never see half of it."""
        with self._lock:
            self._check_guards(batch)
            for op in batch:
                self._apply(op)

    def _check_guards(self, batch: WriteBatch) -> None:
        for (key, field), expected in batch.guards.items():
            self._expire_if_due(key)
            if self._hashes.get(key, {}).get(field) != expected:
                raise ConflictError(f"{key}.{field} changed since it was read")

    def commit_sharded(self, routed: RoutedBatch, layout: ShardLayout) -> None:
        """Apply a routed batch under one lock: one process holds every shard, so the whole
        batch is one step (each shard keeps its copy of the checkpoint, as on Redis)."""
        with self._lock:
            self._check_guards(routed.home)
            for op in routed.home:
                self._apply(op)
            for shard, group in sorted(routed.shards.items()):
                for op in group:
                    self._apply(renamed(op, layout.to_stored))
                if routed.marks:
                    self._apply(HSet(layout.slot_offsets_key(shard), dict(routed.marks)))

    def settle_sharded(self, layout: ShardLayout) -> int:
        """Nothing to finish: :meth:`commit_sharded` is one step."""
        return 0

    def _apply(self, op: Op) -> None:
        match op:
            case ZIncrBy(key, amounts):
                target = self._writable_zset(key)
                for member, amount in amounts.items():
                    target[member] = target.get(member, 0.0) + amount
                self._index(key, target, amounts)
            case ZAdd(key, scores, greater):
                target = self._writable_zset(key)
                for member, score in scores.items():
                    if not greater or score > target.get(member, float("-inf")):
                        target[member] = score
                self._index(key, target, scores)
            case ZRem(key, members):
                zset = self._live_zset(key)
                if zset is not None:
                    for member in members:
                        zset.pop(member, None)
            case ZRemBelow(key, score):
                zset = self._live_zset(key)
                if zset is not None:
                    # Trimmed on every batch: the min-heap keeps it O(removed · log n).
                    heap = self._heap(key, zset)
                    while heap and heap[0][0] < score:
                        old, _, member = heapq.heappop(heap)
                        if zset.get(member) == old:
                            del zset[member]
            case ZKeepTop(key, keep):
                zset = self._live_zset(key)
                if zset is not None and len(zset) > keep:
                    best = sorted(zset.items(), key=_rank_key, reverse=True)[: max(keep, 0)]
                    self._zsets[key] = dict(best)
                    self._low.pop(key, None)
                    self._high.pop(key, None)
            case ZScale(key, factor):
                self._scale(key, factor)
            case ZScalePrefix(prefix, factor):
                for key in [k for k in self._zsets if k.startswith(prefix)]:
                    self._scale(key, factor)
            case HSet(key, fields):
                self._expire_if_due(key)
                self._hashes.setdefault(key, {}).update(fields)
            case HSetNX(key, fields):
                self._expire_if_due(key)
                record = self._hashes.setdefault(key, {})
                for field, value in fields.items():
                    record.setdefault(field, value)
            case SetBytes(key, value, ttl_s):
                self._delete(key)
                self._values[key] = value
                if ttl_s is not None:
                    self._expiry[key] = self._clock() + ttl_s
            case Expire(key, seconds):
                if self._exists(key):
                    self._expiry[key] = self._clock() + seconds
            case Delete(key):
                self._delete(key)

    def _exists(self, key: str) -> bool:
        self._expire_if_due(key)
        return key in self._zsets or key in self._hashes or key in self._values

    def _expire_if_due(self, key: str) -> None:
        deadline = self._expiry.get(key)
        if deadline is not None and deadline <= self._clock():
            self._delete(key)

    def _index(self, key: str, zset: dict[str, float], members: Mapping[str, float]) -> None:
        heap = self._low.get(key)
        if heap is not None:
            for member in members:
                heapq.heappush(heap, (zset[member], member.encode(), member))
        high = self._high.get(key)
        if high is not None:
            for member in members:
                heapq.heappush(high, (-zset[member], _descending(member), member))

    def _delete(self, key: str) -> None:
        self._low.pop(key, None)
        self._high.pop(key, None)
        self._zsets.pop(key, None)
        self._hashes.pop(key, None)
        self._values.pop(key, None)
        self._expiry.pop(key, None)

    def _scale(self, key: str, factor: float) -> None:
        zset = self._live_zset(key)
        if zset is not None:
            for member in zset:
                zset[member] *= factor
            self._low.pop(key, None)
            self._high.pop(key, None)

    def _live_zset(self, key: str) -> dict[str, float] | None:
        self._expire_if_due(key)
        return self._zsets.get(key)

    def _writable_zset(self, key: str) -> dict[str, float]:
        zset = self._live_zset(key)
        if zset is None:
            zset = self._zsets[key] = {}
        return zset

    def top(self, key: str, k: int) -> list[tuple[str, float]]:
        """Best ``k`` members, ordered as ZREVRANGE orders them."""
        with self._lock:
            zset = self._live_zset(key)
            if not zset or k <= 0:
                return []
            if len(zset) <= _SMALL_ZSET or k >= len(zset) // 4:
                return sorted(zset.items(), key=_rank_key, reverse=True)[:k]
            heap = self._high.get(key)
            if heap is None or len(heap) > 2 * len(zset) + 64:
                heap = self._high[key] = [(-sc, _descending(m), m) for m, sc in zset.items()]
                heapq.heapify(heap)
            rows: list[tuple[str, float]] = []
            kept: list[tuple[float, tuple[int, ...], str]] = []
            taken: set[str] = set()
            while heap and len(rows) < k:
                entry = heapq.heappop(heap)
                negative, _, member = entry
                if zset.get(member) != -negative or member in taken:
                    continue  # stale: removed or rescored since it was pushed
                kept.append(entry)
                taken.add(member)
                rows.append((member, -negative))
            for entry in kept:
                heapq.heappush(heap, entry)
            return rows

    def lowest(self, key: str, max_score: float, limit: int) -> list[tuple[str, float]]:
        """Members scored at most ``max_score``, ordered as ZRANGEBYSCORE orders them.

        A lazily kept min-heap per queried key makes this O(limit · log n): a due set is
        asked on every batch while it holds minutes of open feeds.
        """
        with self._lock:
            zset = self._live_zset(key)
            if not zset or limit <= 0:
                return []
            heap = self._heap(key, zset)
            rows: list[tuple[str, float]] = []
            popped: list[tuple[float, bytes, str]] = []
            taken: set[str] = set()
            while heap and len(rows) < limit and heap[0][0] <= max_score:
                entry = heapq.heappop(heap)
                score, _, member = entry
                if zset.get(member) != score or member in taken:
                    continue  # stale: removed or rescored since it was pushed
                popped.append(entry)
                taken.add(member)
                rows.append((member, score))
            for entry in popped:
                heapq.heappush(heap, entry)
            return rows

    def _heap(self, key: str, zset: dict[str, float]) -> list[tuple[float, bytes, str]]:
        """The key's lazy min-heap, built (or rebuilt when mostly stale) on demand."""
        heap = self._low.get(key)
        if heap is None or len(heap) > 2 * len(zset) + 64:
            heap = self._low[key] = [(sc, m.encode(), m) for m, sc in zset.items()]
            heapq.heapify(heap)
        return heap

    def top_many(self, keys: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """:meth:`top` of several keys."""
        return [self.top(key, k) for key in keys]

    def zscores(self, key: str, members: Sequence[str]) -> list[float | None]:
        """Scores of ``members``; None for the absent."""
        with self._lock:
            zset = self._live_zset(key) or {}
            return [zset.get(m) for m in members]

    def values_and_tops(
        self, value_keys: Sequence[str], top_keys: Sequence[str], k: int
    ) -> tuple[list[bytes | None], list[list[tuple[str, float]]]]:
        """:meth:`get_bytes` and :meth:`top_many` together."""
        return self.get_bytes(value_keys), self.top_many(top_keys, k)

    def zscores_each(self, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        """Score of each (key, member); None for the absent."""
        with self._lock:
            return [(self._live_zset(key) or {}).get(member) for key, member in pairs]

    def zscores_many(self, keys: Sequence[str], members: Sequence[str]) -> list[list[float | None]]:
        """:meth:`zscores` of several keys."""
        return [self.zscores(key, members) for key in keys]

    def zcard(self, key: str) -> int:
        """Size of a sorted set."""
        with self._lock:
            return len(self._live_zset(key) or {})

    def hgetall(self, key: str) -> dict[str, str]:
        """Copy of a hash."""
        with self._lock:
            self._expire_if_due(key)
            return dict(self._hashes.get(key, {}))

    def hgetall_many(self, keys: Sequence[str]) -> list[dict[str, str]]:
        """Copies of several hashes."""
        return [self.hgetall(key) for key in keys]

    def hget_many(self, keys: Sequence[str], field: str) -> list[str | None]:
        """One field of many hashes."""
        with self._lock:
            for key in keys:
                self._expire_if_due(key)
            return [self._hashes.get(key, {}).get(field) for key in keys]

    def get_bytes(self, keys: Sequence[str]) -> list[bytes | None]:
        """Plain values."""
        with self._lock:
            for key in keys:
                self._expire_if_due(key)
            return [self._values.get(key) for key in keys]

    def ttl(self, key: str) -> int | None:
        """Whole seconds left, rounded up as Redis's TTL does."""
        with self._lock:
            if not self._exists(key) or key not in self._expiry:
                return None
            return max(0, round(self._expiry[key] - self._clock()))

    def dump(self, prefix: str) -> dict[str, object]:
        """Every live key under ``prefix`` with its value (tests compare stores with this)."""
        with self._lock:
            out: dict[str, object] = {}
            for table in (self._zsets, self._hashes, self._values):
                for key in list(table):
                    self._expire_if_due(key)
                    if key.startswith(prefix) and key in table:
                        value = table[key]
                        out[key] = dict(value) if isinstance(value, dict) else value
            return out

    def ping(self) -> bool:
        """Always reachable."""
        return True

    def close(self) -> None:
        """Nothing to release."""
