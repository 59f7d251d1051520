"""A store over a namespace split into shards: logical keys in, stored keys out.

Writers and readers keep the logical keys of :class:`features.keys.Keys`; this wrapper maps
them through a :class:`features.sharding.ShardLayout`. Reads of a split sorted set merge its
shards' tops; a read over many keys goes down as one call, which the store beneath answers
across slots (:class:`features.stores.redis_store.RedisStore` pipelines one script per slot
over a cluster's nodes); a commit that writes more than one slot goes to the store's
sharded commit (:meth:`features.store.ShardableStore.commit_sharded`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from features.batch import WriteBatch
from features.errors import ConflictError, StreamrecError
from features.sharding import SPLIT, ShardLayout, merge_lowest, merge_tops
from features.store import ShardableStore, Store

log = logging.getLogger(__name__)


class ShardLayoutError(StreamrecError):
    """The store holds the namespace in another number of shards than configured."""


class ShardedStore:
    """A :class:`features.store.Store` that stores a namespace over ``layout.shards`` shards.

    Examples:
        >>> from features.keys import Keys
        >>> from features.stores.memory_store import InMemoryStore
        >>> keys, inner = Keys("sr"), InMemoryStore()
        >>> store = ShardedStore(inner, ShardLayout("sr", 4))
        >>> b = WriteBatch()
        >>> b.zincrby(keys.popularity_all_time(), "a", 2.0)
        >>> b.zincrby(keys.popularity_all_time(), "b", 1.0)
        >>> store.commit(b)
        >>> store.top(keys.popularity_all_time(), 2)
        [('a', 2.0), ('b', 1.0)]
        >>> sorted(inner.dump("{sr"))
        ['{sr#1}:pop:all', '{sr#3}:pop:all']
    """

    def __init__(self, inner: ShardableStore, layout: ShardLayout) -> None:
        self.inner, self.layout = inner, layout

    # --- writes ------------------------------------------------------------------------------

    def commit(self, batch: WriteBatch) -> None:
        """Commit ``batch``: as one script when it writes one slot, sharded otherwise."""
        if not batch:
            return
        routed = self.layout.route(batch)
        if not routed.shards:
            self.inner.commit(routed.home)
        else:
            self.inner.commit_sharded(routed, self.layout)

    def settle(self) -> int:
        """Finish what a crashed worker decided but did not apply everywhere."""
        settled = self.inner.settle_sharded(self.layout)
        if settled:
            log.warning("finished %d batch(es) a crash left between shard commits", settled)
        return settled

    # --- reads ---------------------------------------------------------------------------------

    def top(self, key: str, k: int) -> list[tuple[str, float]]:
        """The best ``k``; of a split set, the shards' tops merged."""
        return self.top_many([key], k)[0]

    def top_many(self, keys: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """:meth:`top` of several keys."""
        parts = [self.layout.parts(key) for key in keys]
        rows = self.inner.top_many([p for ps in parts for p in ps], k)
        out: list[list[tuple[str, float]]] = []
        at = 0
        for ps in parts:
            chunk, at = rows[at : at + len(ps)], at + len(ps)
            out.append(chunk[0] if len(ps) == 1 else merge_tops(chunk, k))
        return out

    def lowest(self, key: str, max_score: float, limit: int) -> list[tuple[str, float]]:
        """The lowest members up to ``max_score``; of a split set, merged."""
        rows = [self.inner.lowest(p, max_score, limit) for p in self.layout.parts(key)]
        return rows[0] if len(rows) == 1 else merge_lowest(rows, limit)

    def zscores(self, key: str, members: Sequence[str]) -> list[float | None]:
        """Scores of members (each read from its shard)."""
        return self.zscores_each([(key, m) for m in members])

    def values_and_tops(
        self, value_keys: Sequence[str], top_keys: Sequence[str], k: int
    ) -> tuple[list[bytes | None], list[list[tuple[str, float]]]]:
        """Values of ``value_keys`` and tops of ``top_keys``."""
        return self.get_bytes(value_keys), self.top_many(top_keys, k)

    def zscores_each(self, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        """The score of each (key, member) pair."""
        return self.inner.zscores_each([(self.layout.member_key(k, m), m) for k, m in pairs])

    def zscores_many(self, keys: Sequence[str], members: Sequence[str]) -> list[list[float | None]]:
        """Scores of the same members in several keys."""
        flat = self.zscores_each([(key, m) for key in keys for m in members])
        n = len(members)
        return [flat[i * n : (i + 1) * n] for i in range(len(keys))]

    def zcard(self, key: str) -> int:
        """Members of a sorted set (summed over a split set's shards)."""
        return sum(self.inner.zcard(p) for p in self.layout.parts(key))

    def hgetall(self, key: str) -> dict[str, str]:
        """A hash."""
        return self.inner.hgetall(self._one(key))

    def hgetall_many(self, keys: Sequence[str]) -> list[dict[str, str]]:
        """Several hashes (pipelined by the store beneath, across slots)."""
        return self.inner.hgetall_many([self._one(k) for k in keys])

    def hget_many(self, keys: Sequence[str], field: str) -> list[str | None]:
        """One field of many hashes."""
        return self.inner.hget_many([self._one(k) for k in keys], field)

    def get_bytes(self, keys: Sequence[str]) -> list[bytes | None]:
        """Plain values."""
        return self.inner.get_bytes([self._one(k) for k in keys])

    def ttl(self, key: str) -> int | None:
        """A key's time to live."""
        return self.inner.ttl(self._one(key))

    def dump(self, prefix: str) -> dict[str, object]:
        """The logical state under ``prefix``: stored keys renamed back, split sets merged,
        the commit's bookkeeping left out."""
        out: dict[str, object] = {}
        for stored_prefix in self.layout.prefixes(prefix):
            for key, value in self.inner.dump(stored_prefix).items():
                logical = self.layout.logical(key)
                if logical is None:
                    continue
                if self.layout.place(logical) == SPLIT and isinstance(value, dict):
                    merged = out.setdefault(logical, {})
                    assert isinstance(merged, dict)
                    merged.update(value)
                else:
                    out[logical] = value
        return out

    def ping(self) -> bool:
        """Whether the store answers."""
        return self.inner.ping()

    def close(self) -> None:
        """Close the store beneath."""
        self.inner.close()

    # --- internals -------------------------------------------------------------------------

    def _one(self, key: str) -> str:
        place = self.layout.place(key)
        if place == SPLIT:
            raise ValueError(f"{key!r} is split over the shards: read it with top or zscores")
        return self.layout.stored(key)


def check_layout(store: Store, layout: ShardLayout, *, record: bool) -> None:
    """Refuse a store that holds the namespace in another number of shards than ``layout``;
    with ``record``, note a sharded layout where none is noted yet. A namespace with a
    checkpoint and no note is unsharded: one Redis keeps its layout as it always was."""
    meta = layout.meta_key()
    recorded = store.hgetall(meta).get("shards")
    if recorded is None and store.dump(layout.home_tag + ":offsets:"):
        recorded = "1"
    if recorded is None:
        if record and layout.shards > 1:
            batch = WriteBatch()
            batch.guard(meta, "shards", None)
            batch.hset(meta, {"shards": str(layout.shards)})
            try:
                store.commit(batch)
            except ConflictError:
                check_layout(store, layout, record=False)  # another process noted one first
        return
    if int(recorded) != layout.shards:
        raise ShardLayoutError(
            f"namespace {layout.namespace!r} is stored in {recorded} shard(s), but "
            f"redis_shards is {layout.shards}: set STREAMREC_REDIS_SHARDS={recorded}, "
            "or replay the streams into a new namespace"
        )
