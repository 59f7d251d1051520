"""Reads from a Redis read replica while it keeps up, and the lag it adds, measured.

The API's reads (user state, lists, counts) then never queue behind the worker's batch
scripts on the primary: the replica applies the replicated commands one by one, between its
own reads. The price is staleness, which :class:`ReplicaProbe` samples the way pt-heartbeat
does, but exactly (``RedisStore.replication_lag_ms``): it writes a probe key on the primary
and waits (``WAIT``) for one replica to acknowledge it, so the time that takes is how far the
replica trails the primary at that moment. :class:`ReplicaReadStore` reads the replica only
while that lag is within bounds and the replica answers; otherwise it reads the primary, as a
primary-only deployment does.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from features.batch import WriteBatch
from features.errors import StoreUnavailableError
from features.sharding import RoutedBatch, ShardLayout
from features.store import ShardableStore, Store

log = logging.getLogger(__name__)
T = TypeVar("T")


class ReplicationLag:
    """Recent lag samples of one replica, and whether it is fresh enough to read.

    Examples:
        >>> lag = ReplicationLag(max_lag_ms=500.0, window=4)
        >>> lag.fresh  # nothing measured yet: read the primary
        False
        >>> for ms in (2.0, 3.0, 40.0):
        ...     lag.record(ms)
        >>> lag.fresh, lag.summary()["p99_ms"]
        (True, 40.0)
        >>> lag.record(None)  # not acknowledged within the probe's timeout
        >>> lag.fresh, lag.summary()["reading"]
        (False, 'primary')
    """

    def __init__(self, max_lag_ms: float, window: int = 600) -> None:
        self.max_lag_ms = max_lag_ms
        self._samples: deque[float] = deque(maxlen=window)
        self._last: float | None = None
        self._unacknowledged = 0
        self._failed_reads = 0
        self._lock = threading.Lock()

    def record(self, lag_ms: float | None) -> None:
        """One probe's lag, or None when no replica acknowledged within its timeout."""
        with self._lock:
            self._last = lag_ms
            if lag_ms is None:
                self._unacknowledged += 1
            else:
                self._samples.append(lag_ms)

    def read_failed(self) -> None:
        """A read on the replica failed: read the primary until a probe says otherwise."""
        with self._lock:
            self._failed_reads += 1
            self._last = None

    @property
    def fresh(self) -> bool:
        """Whether the last probe saw the replica within ``max_lag_ms`` of the primary."""
        last = self._last
        return last is not None and last <= self.max_lag_ms

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: the last lag, p50 and p99 of the window, what is read."""
        with self._lock:
            ordered = sorted(self._samples)
            last = self._last
            unacknowledged, failed = self._unacknowledged, self._failed_reads
        return {
            "reading": "replica" if self.fresh else "primary",
            "last_ms": None if last is None else round(last, 3),
            "p50_ms": _quantile(ordered, 0.5),
            "p99_ms": _quantile(ordered, 0.99),
            "max_lag_ms": self.max_lag_ms,
            "samples": len(ordered),
            "measured": bool(ordered) or unacknowledged > 0,
            "unacknowledged": unacknowledged,
            "failed_reads": failed,
        }


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank quantile of sorted values (None when there are none)."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 3)


class ReplicaProbe:
    """Samples the replica's lag every ``interval_s`` in a daemon thread.

    ``measure`` is :meth:`features.stores.redis_store.RedisStore.replication_lag_ms` on a
    store of its own (a ``WAIT`` holds its connection for up to the timeout). If the primary
    does not answer, no sample is recorded: nothing new reaches the replica either, and the
    reads carry on where they are.
    """

    def __init__(
        self, measure: Callable[[], float | None], lag: ReplicationLag, *, interval_s: float = 0.1
    ) -> None:
        self.measure = measure
        self.lag = lag
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Probe until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="replica-probe", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop probing (waiting out a probe in flight)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.lag.record(self.measure())
            except StoreUnavailableError as exc:
                log.debug("replica probe: primary unreachable (%s)", exc)
            self._stop.wait(self.interval_s)


class ReplicaReadStore:
    """A :class:`features.store.Store` reading the replica while ``lag.fresh``, else the
    primary; commits always go to the primary.

    Examples:
        >>> from features.stores.memory_store import InMemoryStore
        >>> primary, replica = InMemoryStore(), InMemoryStore()
        >>> batch = WriteBatch(); batch.zadd("k", {"written": 1.0}); primary.commit(batch)
        >>> lag = ReplicationLag(max_lag_ms=100.0)
        >>> store = ReplicaReadStore(primary, replica, lag)
        >>> store.top("k", 5)  # no lag measured yet: the primary answers
        [('written', 1.0)]
        >>> lag.record(1.5)
        >>> store.top("k", 5)  # the replica answers (this one never received the write)
        []
    """

    def __init__(self, primary: ShardableStore, replica: Store, lag: ReplicationLag) -> None:
        self.primary = primary
        self.replica = replica
        self.lag = lag

    def _read(self, read: Callable[[Store], T]) -> T:
        if self.lag.fresh:
            try:
                return read(self.replica)
            except StoreUnavailableError as exc:
                log.warning("replica read failed (%s); reading the primary", exc)
                self.lag.read_failed()
        return read(self.primary)

    def commit(self, batch: WriteBatch) -> None:
        """Writes go to the primary only (a replica is read-only)."""
        self.primary.commit(batch)

    def commit_sharded(self, routed: RoutedBatch, layout: ShardLayout) -> None:
        """See :meth:`commit`."""
        self.primary.commit_sharded(routed, layout)

    def settle_sharded(self, layout: ShardLayout) -> int:
        """Finished on the primary."""
        return self.primary.settle_sharded(layout)

    def top(self, key: str, k: int) -> list[tuple[str, float]]:
        """See :meth:`features.store.Store.top`."""
        return self._read(lambda s: s.top(key, k))

    def top_many(self, keys: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """See :meth:`features.store.Store.top_many`."""
        return self._read(lambda s: s.top_many(keys, k))

    def lowest(self, key: str, max_score: float, limit: int) -> list[tuple[str, float]]:
        """See :meth:`features.store.Store.lowest`."""
        return self._read(lambda s: s.lowest(key, max_score, limit))

    def zscores(self, key: str, members: Sequence[str]) -> list[float | None]:
        """See :meth:`features.store.Store.zscores`."""
        return self._read(lambda s: s.zscores(key, members))

    def values_and_tops(
        self, value_keys: Sequence[str], top_keys: Sequence[str], k: int
    ) -> tuple[list[bytes | None], list[list[tuple[str, float]]]]:
        """See :meth:`features.store.Store.values_and_tops`."""
        return self._read(lambda s: s.values_and_tops(value_keys, top_keys, k))

    def zscores_each(self, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        """See :meth:`features.store.Store.zscores_each`."""
        return self._read(lambda s: s.zscores_each(pairs))

    def zscores_many(self, keys: Sequence[str], members: Sequence[str]) -> list[list[float | None]]:
        """See :meth:`features.store.Store.zscores_many`."""
        return self._read(lambda s: s.zscores_many(keys, members))

    def zcard(self, key: str) -> int:
        """See :meth:`features.store.Store.zcard`."""
        return self._read(lambda s: s.zcard(key))

    def hgetall(self, key: str) -> dict[str, str]:
        """See :meth:`features.store.Store.hgetall`."""
        return self._read(lambda s: s.hgetall(key))

    def hgetall_many(self, keys: Sequence[str]) -> list[dict[str, str]]:
        """See :meth:`features.store.Store.hgetall_many`."""
        return self._read(lambda s: s.hgetall_many(keys))

    def hget_many(self, keys: Sequence[str], field: str) -> list[str | None]:
        """See :meth:`features.store.Store.hget_many`."""
        return self._read(lambda s: s.hget_many(keys, field))

    def get_bytes(self, keys: Sequence[str]) -> list[bytes | None]:
        """See :meth:`features.store.Store.get_bytes`."""
        return self._read(lambda s: s.get_bytes(keys))

    def ttl(self, key: str) -> int | None:
        """See :meth:`features.store.Store.ttl`."""
        return self._read(lambda s: s.ttl(key))

    def dump(self, prefix: str) -> dict[str, object]:
        """The primary's state: a dump is for verifying what was written."""
        return self.primary.dump(prefix)

    def ping(self) -> bool:
        """Whether the store the reads go to now answers (the primary, when it is that)."""
        return (self.lag.fresh and self.replica.ping()) or self.primary.ping()

    def close(self) -> None:
        """Close both connections."""
        self.replica.close()
        self.primary.close()
