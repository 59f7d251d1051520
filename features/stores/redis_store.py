"""The Redis store: one MULTI/EXEC per committed batch, pipelined reads, hiredis parsing."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from features.batch import (
    WriteBatch,
)
from features.errors import ConflictError, StoreUnavailableError
from features.sharding import RoutedBatch, ShardLayout
from features.stores.redis_ops import (
    APPLY_OPS_LUA,
    CONFLICT,
    HGET_MANY_LUA,
    TOP_MANY_LUA,
    VALUES_AND_TOPS_LUA,
    ZSCORES_MANY_LUA,
    encode_ops,
    glob_escape,
)
from features.stores.redis_sharded import ShardedCommit

log = logging.getLogger(__name__)
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)

#: URL scheme of a Redis Cluster: any node's address, the client finds the rest.
CLUSTER_SCHEME = "redis+cluster://"


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster rather than one server.

    Examples:
        >>> is_cluster_url("redis+cluster://localhost:7000"), is_cluster_url("redis://h:6379/0")
        (True, False)
    """
    return url.startswith(CLUSTER_SCHEME)


class RedisStore:
    """A :class:`features.store.Store` on a Redis server (6.2 or newer, for ZMSCORE), or on
    a Redis Cluster (``redis+cluster://host:port``, through redis-py's ``RedisCluster``).

    Each call's keys share one hash tag (one slot); a namespace split into shards is read
    and written through :class:`features.stores.sharded_store.ShardedStore`, which keeps it so.
    """

    def __init__(self, url: str, *, socket_timeout_s: float = 5.0) -> None:
        self.url = url
        timeouts: dict[str, Any] = {
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": socket_timeout_s,
        }
        # Typed as a Redis: RedisCluster takes the same commands, routed by key slot.
        self._client: redis.Redis
        self._cluster = is_cluster_url(url)
        if self._cluster:
            try:
                # Unlike a single server's, the cluster client connects at once (it reads
                # the slot map): an unreachable cluster is an unavailable store.
                self._client = RedisCluster.from_url(  # type: ignore[assignment]
                    "redis://" + url[len(CLUSTER_SCHEME) :], **timeouts
                )
            except (RedisClusterException, *_UNAVAILABLE) as exc:
                raise StoreUnavailableError(f"redis cluster unreachable at {url}: {exc}") from None
        else:
            self._client = redis.Redis.from_url(url, health_check_interval=30, **timeouts)
        self._apply_ops = self._client.register_script(APPLY_OPS_LUA)
        # Many small reads as one call: per command, redis-py costs ~15 µs of Python.
        self._hget_many = self._client.register_script(HGET_MANY_LUA)
        self._top_many = self._client.register_script(TOP_MANY_LUA)
        self._zscores_many = self._client.register_script(ZSCORES_MANY_LUA)
        self._values_and_tops = self._client.register_script(VALUES_AND_TOPS_LUA)
        self._sharded = ShardedCommit(self._client, self._call)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except _UNAVAILABLE as exc:
            reason = f"redis unreachable at {self.url} ({what}): {exc}"
            raise StoreUnavailableError(reason) from None

    def commit(self, batch: WriteBatch) -> None:
        """Apply the batch atomically as one script call; its guards are checked inside it."""
        if not batch:
            return
        keys, argv = encode_ops(batch)
        try:
            self._call("commit", lambda: self._apply_ops(keys=keys, args=argv))
        except ResponseError as exc:
            if str(exc).startswith(CONFLICT):
                raise ConflictError(str(exc)) from None
            raise

    def commit_sharded(self, routed: RoutedBatch, layout: ShardLayout) -> None:
        """Commit a batch that writes several slots (see :mod:`features.stores.redis_sharded`)."""
        self._sharded.commit(routed, layout)

    def settle_sharded(self, layout: ShardLayout) -> int:
        """Apply what crashed sharded commits decided; return how many batches."""
        settled: int = self._sharded.settle(layout)
        return settled

    def top(self, key: str, k: int) -> list[tuple[str, float]]:
        """ZREVRANGE … WITHSCORES."""
        if k <= 0:
            return []
        rows: list[tuple[bytes, float]] = self._call(
            "top", lambda: self._client.zrevrange(key, 0, k - 1, withscores=True)
        )
        return [(m.decode(), float(s)) for m, s in rows]

    def lowest(self, key: str, max_score: float, limit: int) -> list[tuple[str, float]]:
        """ZRANGEBYSCORE key -inf max WITHSCORES LIMIT 0 limit."""
        if limit <= 0:
            return []
        rows: list[tuple[bytes, float]] = self._call(
            "lowest",
            lambda: self._client.zrangebyscore(
                key, "-inf", max_score, start=0, num=limit, withscores=True
            ),
        )
        return [(m.decode(), float(s)) for m, s in rows]

    def top_many(self, keys: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """ZREVRANGE … WITHSCORES of several keys in one script call."""
        if not keys or k <= 0:
            return [[] for _ in keys]
        rows: list[list[bytes]] = self._per_slot("top_many", self._top_many, list(keys), [k])
        return [_pairs(row) for row in rows]

    def values_and_tops(
        self, value_keys: Sequence[str], top_keys: Sequence[str], k: int
    ) -> tuple[list[bytes | None], list[list[tuple[str, float]]]]:
        """GET of ``value_keys`` and ZREVRANGE of ``top_keys``, in one script call."""
        if k <= 0:
            return self.get_bytes(value_keys), [[] for _ in top_keys]
        if self._cluster:  # the keys span slots: one pipelined round trip over the nodes
            return self.get_bytes(value_keys), self.top_many(top_keys, k)
        keys = [*value_keys, *top_keys]
        if not keys:
            return [], []
        rows: list[Any] = self._call(
            "values_and_tops",
            lambda: self._values_and_tops(keys=keys, args=[len(value_keys), k]),
        )
        n = len(value_keys)
        tops = [
            [(row[j].decode(), float(row[j + 1])) for j in range(0, len(row), 2)]
            for row in rows[n:]
        ]
        return [v if v else None for v in rows[:n]], tops

    def zscores(self, key: str, members: Sequence[str]) -> list[float | None]:
        """ZMSCORE."""
        if not members:
            return []
        rows: list[float | None] = self._call(
            "zscores", lambda: self._client.zmscore(key, list(members))
        )
        return [None if s is None else float(s) for s in rows]

    def zscores_each(self, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        """One ZMSCORE per distinct key, pipelined in one round trip."""
        by_key: dict[str, list[int]] = {}
        for index, (key, _member) in enumerate(pairs):
            by_key.setdefault(key, []).append(index)
        if not by_key:
            return []
        pipe = self._client.pipeline(transaction=False)
        for key, indices in by_key.items():
            pipe.zmscore(key, [pairs[i][1] for i in indices])
        rows: list[list[bytes | None]] = self._call("zscores_each", pipe.execute)
        out: list[float | None] = [None] * len(pairs)
        for indices, scores in zip(by_key.values(), rows, strict=True):
            for i, score in zip(indices, scores, strict=True):
                out[i] = None if score is None else float(score)
        return out

    def zscores_many(self, keys: Sequence[str], members: Sequence[str]) -> list[list[float | None]]:
        """ZMSCORE of the same members in several keys, in one script call."""
        out: list[list[float | None]] = [[] for _ in keys]
        if not keys:
            return out
        # Lua's unpack() has a stack limit of a few thousand values.
        for start in range(0, len(members), 4000):
            rows = self._zscores_chunk(list(keys), list(members[start : start + 4000]))
            for row, scores in zip(out, rows, strict=True):
                row.extend(None if s is None else float(s) for s in scores)
        return out

    def _zscores_chunk(self, keys: list[str], members: list[str]) -> list[list[bytes | None]]:
        rows: list[list[bytes | None]] = self._per_slot(
            "zscores_many", self._zscores_many, keys, members
        )
        return rows

    def zcard(self, key: str) -> int:
        """ZCARD."""
        return int(self._call("zcard", lambda: self._client.zcard(key)))

    def hgetall(self, key: str) -> dict[str, str]:
        """HGETALL, decoded."""
        raw: dict[bytes, bytes] = self._call("hgetall", lambda: self._client.hgetall(key))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def hgetall_many(self, keys: Sequence[str]) -> list[dict[str, str]]:
        """HGETALL of several hashes in one pipelined round trip."""
        if not keys:
            return []
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        rows: list[dict[bytes, bytes]] = self._call("hgetall_many", pipe.execute)
        return [{k.decode(): v.decode() for k, v in row.items()} for row in rows]

    def hget_many(self, keys: Sequence[str], field: str) -> list[str | None]:
        """HGET of one field from many hashes, in one script call."""
        if not keys:
            return []
        rows: list[bytes | None] = self._per_slot("hget_many", self._hget_many, list(keys), [field])
        return [None if v is None else v.decode() for v in rows]

    def get_bytes(self, keys: Sequence[str]) -> list[bytes | None]:
        """MGET."""
        if not keys:
            return []
        if self._cluster:  # one MGET per slot, pipelined over the nodes
            mget = self._client.mget_nonatomic  # type: ignore[attr-defined]
            return list(self._call("get_bytes", lambda: mget(list(keys))))
        return list(self._call("get_bytes", lambda: self._client.mget(list(keys))))

    def _per_slot(self, what: str, script: Script, keys: list[str], args: list[Any]) -> list[Any]:
        """A script that answers one entry per key, run over keys of any slots: on a
        cluster, once per slot, the calls pipelined over the nodes (one round trip)."""
        groups: dict[int, list[int]] = {}
        if self._cluster:
            for index, key in enumerate(keys):
                groups.setdefault(self._client.keyslot(key), []).append(index)  # type: ignore[attr-defined]
        if len(groups) <= 1:
            return list(self._call(what, lambda: script(keys=keys, args=args)))

        def pipelined() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for indices in groups.values():
                pipe.evalsha(script.sha, len(indices), *(keys[i] for i in indices), *args)
            replies: list[Any] = pipe.execute(raise_on_error=False)
            return replies

        replies = self._call(what, pipelined)
        if any(isinstance(r, NoScriptError) for r in replies):
            self._call(what, lambda: self._client.script_load(script.script))
            replies = self._call(what, pipelined)
        out: list[Any] = [None] * len(keys)
        for indices, reply in zip(groups.values(), replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            for index, value in zip(indices, reply, strict=True):
                out[index] = value
        return out

    def ttl(self, key: str) -> int | None:
        """TTL, with Redis's -1/-2 mapped to None."""
        left = int(self._call("ttl", lambda: self._client.ttl(key)))
        return None if left < 0 else left

    def replication_lag_ms(self, key: str, timeout_ms: int) -> float | None:
        """How far a replica trails this primary now, in ms: SET ``key`` (expiring in a
        minute), then ``WAIT`` for one replica to acknowledge it (Redis asks the replicas
        for their offsets at once). None when none acknowledged within ``timeout_ms``."""
        started = time.perf_counter()

        def probe() -> Any:
            pipe = self._client.pipeline(transaction=False)
            pipe.set(key, repr(time.time()), px=60_000)
            pipe.wait(1, timeout_ms)
            return pipe.execute()[1]

        acknowledged = int(self._call("replication lag", probe))
        return (time.perf_counter() - started) * 1000.0 if acknowledged >= 1 else None

    def ping(self) -> bool:
        """PING; False instead of raising."""
        try:
            return bool(self._client.ping())
        except (*_UNAVAILABLE, redis.RedisError):
            return False

    def dump(self, prefix: str) -> dict[str, object]:
        """Every key under ``prefix`` with its value, in the shapes InMemoryStore.dump uses."""
        client: Any = self._client  # redis-py's bytes/str unions do not narrow here
        out: dict[str, object] = {}
        for raw_key in client.scan_iter(match=glob_escape(prefix) + "*", count=1000):
            key = raw_key.decode()
            kind = client.type(raw_key).decode()
            if kind == "zset":
                rows = client.zrange(raw_key, 0, -1, withscores=True)
                out[key] = {m.decode(): float(s) for m, s in rows}
            elif kind == "hash":
                out[key] = {f.decode(): v.decode() for f, v in client.hgetall(raw_key).items()}
            elif kind == "string":
                out[key] = client.get(raw_key)
        return out

    def flush_namespace(self, pattern: str) -> int:
        """Delete every key matching ``pattern`` (tests and benchmarks reset with this)."""
        deleted = 0
        for key in self._client.scan_iter(match=pattern, count=1000):
            deleted += int(self._client.delete(key))
        return deleted

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def _pairs(row: list[bytes]) -> list[tuple[str, float]]:
    """A flat WITHSCORES reply as (member, score) pairs."""
    return [(row[j].decode(), float(row[j + 1])) for j in range(0, len(row), 2)]
