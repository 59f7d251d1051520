"""The item catalog: availability and the attributes filters and sources need."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from features.batch import WriteBatch
from features.keys import Keys
from features.store import Store

#: Where an item's stored vector comes from, as its catalog record says (field ``vector``).
#: Its own content (an embedding the item event carried, or text the catalog does not hold):
#: learned embeddings never replace it.
VECTOR_CONTENT = "content"
#: Learned from behaviour (:mod:`features.collab_online`): the next refresh may replace it.
VECTOR_LEARNED = "learned"
#: Nothing, or a hash of the category and creator alone: a learned vector may replace it.
VECTOR_NONE = ""


@dataclass(frozen=True, slots=True)
class ItemMeta:
    """What filters, rules and features need to know about an item."""

    category: str | None
    creator: str | None
    created_at_ms: int
    available: bool

    @classmethod
    def from_record(cls, record: Mapping[str, str]) -> ItemMeta | None:
        """The meta of a stored catalog hash; None for an empty (unknown) record."""
        if not record:
            return None
        created = record.get("created_at", "")
        return cls(
            category=record.get("category") or None,
            creator=record.get("creator") or None,
            created_at_ms=int(created) if created.isdigit() else 0,
            available=record.get("available", "1") != "0",
        )


def deletion_time(record: Mapping[str, str]) -> int | None:
    """When a catalog record was deleted (ms), or None if it is not a tombstone: a delete
    leaves no creation time (:meth:`Catalog.remove`), an unavailable upsert does.

    Examples:
        >>> deletion_time({"available": "0", "updated_at": "17"})
        17
        >>> deletion_time({"available": "0", "created_at": "5", "updated_at": "17"}) is None
        True
    """
    if record.get("available") != "0" or "created_at" in record:
        return None
    updated = record.get("updated_at", "")
    return int(updated) if updated.isdigit() else 0


class Catalog:
    """Item records as hashes, plus a sorted set of available items by creation time.

    Examples:
        >>> from features.stores.memory_store import InMemoryStore
        >>> catalog, store, batch = Catalog(Keys("t")), InMemoryStore(), WriteBatch()
        >>> catalog.upsert(batch, "a", category="news", creator="c1", available=True,
        ...                created_at_ms=5, ts_ms=5)
        >>> catalog.remove(batch, "b", ts_ms=6)
        >>> store.commit(batch)
        >>> [meta and meta.available for meta in catalog.records(store, ["a", "b", "zzz"])]
        [True, False, None]
    """

    def __init__(self, keys: Keys) -> None:
        self.keys = keys

    def upsert(
        self,
        batch: WriteBatch,
        item_id: str,
        *,
        category: str | None,
        creator: str | None,
        available: bool,
        created_at_ms: int,
        ts_ms: int,
        vector: str = VECTOR_NONE,
    ) -> None:
        """Queue the item's record and its place in the fresh-items index; ``vector`` says
        where the item's vector comes from (:data:`VECTOR_CONTENT` and the others)."""
        batch.hset(
            self.keys.item(item_id),
            {
                "category": category or "",
                "creator": creator or "",
                "available": "1" if available else "0",
                "created_at": str(created_at_ms),
                "updated_at": str(ts_ms),
                "stub": "0",
                "vector": vector,
            },
        )
        if available:
            batch.zadd(self.keys.items_by_time(), {item_id: float(created_at_ms)})
        else:
            batch.zrem(self.keys.items_by_time(), [item_id])

    def set_vector_source(self, batch: WriteBatch, item_id: str, vector: str) -> None:
        """Queue a change of only where the item's vector comes from; the rest of its
        record (a stub's included) stays as it is."""
        batch.hset(self.keys.item(item_id), {"vector": vector})

    def stub(self, batch: WriteBatch, item_id: str, *, ts_ms: int) -> None:
        """Queue a placeholder for an item seen in interactions before its item event.

        Field by field set-if-absent, so it never overrides a real record that lands first.
        """
        batch.hsetnx(
            self.keys.item(item_id),
            {
                "category": "",
                "creator": "",
                "available": "1",
                "created_at": str(ts_ms),
                "updated_at": str(ts_ms),
                "stub": "1",
            },
        )

    def remove(self, batch: WriteBatch, item_id: str, *, ts_ms: int) -> None:
        """Queue a delete: the record becomes a tombstone so filters can drop the item.

        The whole record is replaced, not patched, so that it is the same whether the item's
        earlier upsert was applied in an earlier batch or superseded in this one.
        """
        key = self.keys.item(item_id)
        batch.delete(key)
        batch.hset(
            key,
            {
                "category": "",
                "creator": "",
                "available": "0",
                "updated_at": str(ts_ms),
                "stub": "0",
            },
        )
        batch.zrem(self.keys.items_by_time(), [item_id])

    def records(self, store: Store, item_ids: Sequence[str]) -> list[ItemMeta | None]:
        """Each item's catalog meta; None for items never seen."""
        rows = store.hgetall_many([self.keys.item(i) for i in item_ids])
        return [ItemMeta.from_record(row) for row in rows]

    def records_and_vectors(
        self, store: Store, item_ids: Sequence[str]
    ) -> list[tuple[ItemMeta | None, str]]:
        """Each item's catalog meta and where its vector comes from (one batched read)."""
        rows = store.hgetall_many([self.keys.item(i) for i in item_ids])
        return [(ItemMeta.from_record(row), row.get("vector", VECTOR_NONE)) for row in rows]
