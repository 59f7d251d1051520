"""Processors: pure functions from a batch of decoded events plus current state to writes.

The runtime (Kafka or embedded) decodes, deduplicates and hands each processor the batch;
a processor reads what it needs through :class:`BatchReads` (each read happens once per
batch, however many processors need it) and queues writes into one WriteBatch, which the
runtime commits atomically with the partition offsets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, TypeVar

import numpy as np

from features.batch import WriteBatch
from features.catalog import Catalog
from features.covisitation import Covisitation, Visit
from features.embeddings import (
    EMBEDDING_EVENT_WEIGHTS,
    EmbeddingState,
    Vector,
    update,
    update_many,
)
from features.keys import Keys
from features.seen import NEGATIVE_TYPES, SeenSet
from features.settings import FeatureSettings
from features.store import Store
from features.trending import Counted, Trending
from streams.item_vectors import item_vector, vector_source
from streams.schema import Impression, Interaction, Item
from streams.worker.state_cache import StateCache

T = TypeVar("T")


@dataclass
class EventBatch:
    """The decoded, not-yet-applied events of one poll, in offset order per partition."""

    interactions: list[Interaction] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    #: Served feeds with the impressions partition each came from.
    impressions: list[tuple[int, Impression]] = field(default_factory=list)
    #: Event time (ms) reached by each impressions partition of the batch: feeds whose
    #: attribution window closed before it are final.
    impression_clocks: dict[int, int] = field(default_factory=dict)
    #: The interactions' event ids by partition (id → event time ms), recorded with the batch
    #: so that a re-sent event is recognised.
    event_ids: dict[int, dict[str, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.interactions) + len(self.items) + len(self.impressions)


class BatchReads:
    """State the processors read, fetched lazily and at most once per batch.

    With a :class:`StateCache`, reads it can answer cost nothing, and what is read is kept in
    it. A miss on a user's state or an item lookup reads the store at once: the cache absorbed
    whatever the batch in flight writes of those (its users' recent items and embedding
    states, its items' vectors and categories; a catalog stub reads back like no record),
    unless it marked the key unknown. Every other read first calls ``barrier``, which waits
    for the commit in flight.
    """

    def __init__(
        self,
        events: EventBatch,
        store: Store,
        keys: Keys,
        dim: int,
        cache: StateCache | None = None,
        barrier: Callable[[], None] | None = None,
    ) -> None:
        self.events, self.store, self.keys, self.dim = events, store, keys, dim
        self.cache = cache
        self._barrier = barrier

    def read(self, fn: Callable[[], T], *, after_inflight: bool = True) -> T:
        """Run a store read; by default only once the commit in flight (if any) has landed."""
        if after_inflight and self._barrier is not None:
            self._barrier()
        return fn()

    @cached_property
    def new_item_vectors(self) -> dict[str, Vector | None]:
        """Vectors of the batch's item upserts (the last event per item wins)."""
        latest = {item.item_id: item for item in self.events.items}
        return {
            item_id: item_vector(item, self.dim) if item.op == "upsert" else None
            for item_id, item in latest.items()
        }

    def _items(self, kind: str, fetch: Callable[[list[str]], list[Any]]) -> dict[str, Any]:
        """Known values of an item lookup for every interacted item (absent ones left out)."""
        out: dict[str, Any] = {}
        missing: list[str] = []
        for item in self.interacted_items:
            hit, value = self.cache.item(kind, item) if self.cache else (False, None)
            if hit:
                if value is not None:
                    out[item] = value
            else:
                missing.append(item)
        if missing:
            values = self.read(lambda: fetch(missing), after_inflight=False)
            for item, value in zip(missing, values, strict=True):
                if value is not None:
                    out[item] = value
                    if self.cache is not None:
                        self.cache.put_item(kind, item, value)
        return out

    @cached_property
    def item_vectors(self) -> dict[str, Vector]:
        """Vector of every interacted item that has one: from this batch, else as stored."""

        def fetch(items: list[str]) -> list[Vector | None]:
            raws = self.store.get_bytes([self.keys.item_embedding(i) for i in items])
            return [
                np.frombuffer(raw, dtype=np.float32)
                if raw is not None and len(raw) == 4 * self.dim
                else None
                for raw in raws
            ]

        out: dict[str, Vector] = self._items("vector", fetch)
        for item_id, vector in self.new_item_vectors.items():
            if vector is not None:
                out[item_id] = vector
            else:
                out.pop(item_id, None)
        return out

    @cached_property
    def landmarks(self) -> dict[str, str]:
        """The decay landmarks hash."""
        if self.cache is not None and self.cache.landmarks is not None:
            return dict(self.cache.landmarks)
        landmarks = self.read(lambda: self.store.hgetall(self.keys.landmarks()))
        if self.cache is not None:
            self.cache.landmarks = dict(landmarks)
        return landmarks

    def known_categories(self) -> list[str]:
        """Every category counted so far (only a landmark rotation needs them)."""
        return self.read(lambda: [c for c, _ in self.store.top(self.keys.categories(), 10**6)])

    @cached_property
    def interacted_items(self) -> list[str]:
        """Distinct items of the batch's interactions, in first-seen order."""
        return list(dict.fromkeys(e.item_id for e in self.events.interactions))

    @cached_property
    def catalog_categories(self) -> dict[str, str | None]:
        """Category of each interacted item as the catalog has it; absent items are left out.

        Item events of the same batch count too: an item and its first clicks often travel
        together, and the counts must not depend on where a batch happens to be cut.
        """

        def fetch(items: list[str]) -> list[str | None]:
            return self.store.hget_many([self.keys.item(i) for i in items], "category")

        # Stored as "" for an item without a category; None means the item is unknown.
        out = {i: (c or None) for i, c in self._items("category", fetch).items()}
        for item_id, category in self._batch_categories().items():
            out[item_id] = category or None
        return out

    def _batch_categories(self) -> dict[str, str]:
        """The category the batch's last event of each item leaves ("" after a delete, whose
        tombstone has none): the same as a later batch reads back."""
        latest = {item.item_id: item for item in self.events.items}
        return {i: (e.category or "") if e.op == "upsert" else "" for i, e in latest.items()}

    def recent(self, users: list[str], k: int) -> dict[str, list[tuple[str, float]]]:
        """Each user's ``k`` latest seen items (item, event time), newest first."""
        keys = {user: self.keys.seen(user) for user in users}
        cache = self.cache
        out: dict[str, list[tuple[str, float]]] = {}
        missing: list[str] = []
        for user, key in keys.items():
            entry = cache.recent.get(key) if cache is not None else None
            if entry is not None and entry[0] >= k and not self._any_unknown([key]):
                out[user] = entry[1][:k]
            else:
                missing.append(user)
        if missing:
            wanted = [keys[u] for u in missing]
            rows = self.read(
                lambda: self.store.top_many(wanted, k), after_inflight=self._any_unknown(wanted)
            )
            for user, key, row in zip(missing, wanted, rows, strict=True):
                out[user] = row
                if cache is not None:
                    cache.put(cache.recent, key, (k, row))
                    cache.unknown.discard(key)
        return out

    def states(self, keys: list[str]) -> list[bytes | None]:
        """Stored values (embedding states) of ``keys``."""
        cache = self.cache
        known = cache.states if cache is not None else {}
        missing = [k for k in keys if k not in known or self._any_unknown([k])]
        fetched: dict[str, bytes | None] = {}
        if missing:
            values = self.read(
                lambda: self.store.get_bytes(missing), after_inflight=self._any_unknown(missing)
            )
            fetched = dict(zip(missing, values, strict=True))
            if cache is not None:
                for key, value in fetched.items():
                    cache.put(cache.states, key, value)
                    cache.unknown.discard(key)
        return [fetched[k] if k in fetched else known[k] for k in keys]

    def _any_unknown(self, keys: list[str]) -> bool:
        """Whether the commit in flight changes any of ``keys`` in a way the cache cannot
        follow (they are then read once it has landed)."""
        return self.cache is not None and not self.cache.unknown.isdisjoint(keys)


class Processor(Protocol):
    """Turns an event batch into state writes."""

    name: str

    def apply(self, events: EventBatch, reads: BatchReads, batch: WriteBatch) -> None:
        """Queue writes into ``batch``, reading current state through ``reads``."""
        ...


class CatalogProcessor:
    """Item events → catalog records; interactions on unknown items → catalog stubs."""

    name = "catalog"

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def apply(self, events: EventBatch, reads: BatchReads, batch: WriteBatch) -> None:
        """Write each item's last upsert or delete of the batch, then stubs for the unknown."""
        latest: dict[str, Item] = {}
        for item in events.items:
            latest[item.item_id] = item
        for item_id, vector in reads.new_item_vectors.items():
            key = reads.keys.item_embedding(item_id)
            if vector is not None:
                batch.set_bytes(key, vector.tobytes())
            else:
                # An item event is the item's whole record (the topic is compacted): a delete,
                # or an upsert with nothing to embed, leaves no vector, as the ANN replica does.
                batch.delete(key)
        for item in latest.values():
            if item.op == "delete":
                self.catalog.remove(batch, item.item_id, ts_ms=item.ts)
            elif item.embedding_learned:
                # The refresher restates the record only so the compacted topic keeps it;
                # applying it whole would turn a stub into a catalog entry (and a "fresh"
                # item) and race a newer upsert or delete from the item's own producer.
                self.catalog.set_vector_source(batch, item.item_id, vector_source(item))
            else:
                self.catalog.upsert(
                    batch,
                    item.item_id,
                    category=item.category,
                    creator=item.creator,
                    available=item.available,
                    created_at_ms=item.created_at if item.created_at is not None else item.ts,
                    ts_ms=item.ts,
                    vector=vector_source(item),
                )
        if events.interactions:
            known = reads.catalog_categories
            first_seen: dict[str, int] = {}
            for e in events.interactions:
                if e.item_id not in known and e.item_id not in first_seen:
                    first_seen[e.item_id] = e.ts
            for item_id, ts in first_seen.items():
                self.catalog.stub(batch, item_id, ts_ms=ts)


class TrendingProcessor:
    """Interactions → decayed trending (global and per category) and all-time popularity."""

    name = "trending"

    def __init__(self, trending: Trending) -> None:
        self.trending = trending

    def apply(self, events: EventBatch, reads: BatchReads, batch: WriteBatch) -> None:
        """One set of reads, then one merged increment per (key, item)."""
        if not events.interactions:
            return
        categories = reads.catalog_categories
        counted = [
            Counted(e.item_id, e.type, e.ts, categories.get(e.item_id)) for e in events.interactions
        ]
        self.trending.add(batch, reads.landmarks, reads.known_categories, counted)


class SeenProcessor:
    """Interactions → each user's bounded seen-set and negative set."""

    name = "seen"

    def __init__(self, seen: SeenSet) -> None:
        self.seen = seen

    def apply(self, events: EventBatch, reads: BatchReads, batch: WriteBatch) -> None:
        """Group by user so each user's sets are written once per batch."""
        seen: dict[str, dict[str, int]] = defaultdict(dict)
        negative: dict[str, dict[str, int]] = defaultdict(dict)
        for e in events.interactions:
            for table, wanted in ((seen, True), (negative, e.type in NEGATIVE_TYPES)):
                if wanted:
                    items = table[e.user_id]
                    items[e.item_id] = max(e.ts, items.get(e.item_id, e.ts))
        for user_id, items in seen.items():
            self.seen.add(batch, user_id, items, negative.get(user_id))


class CovisitationProcessor:
    """Interactions → co-visited item pairs from each user's recent history."""

    name = "covisitation"

    def __init__(self, covisitation: Covisitation, seen: SeenSet) -> None:
        self.covisitation = covisitation
        self.seen = seen

    def apply(self, events: EventBatch, reads: BatchReads, batch: WriteBatch) -> None:
        """Read every user's latest items in one round trip, then count pairs."""
        visits: dict[str, list[Visit]] = defaultdict(list)
        for e in events.interactions:
            visits[e.user_id].append(Visit(e.item_id, e.ts, e.type not in NEGATIVE_TYPES))
        if not visits:
            return
        history = reads.recent(list(visits), self.covisitation.history_size)
        self.covisitation.add(batch, reads.landmarks, history, visits)


class EmbeddingProcessor:
    """Interactions → each user's session (short-term) and long-term embeddings."""

    name = "embeddings"

    def __init__(self, keys: Keys, settings: FeatureSettings) -> None:
        self.keys = keys
        self.dim = settings.embedding_dim
        self.session_half_life_s = settings.session_half_life_s
        self.session_gap_s = settings.session_gap_s
        self.user_half_life_s = settings.user_half_life_s
        self.weights = dict(EMBEDDING_EVENT_WEIGHTS)
        # A session key outlives its gap a little, so a late event still finds it.
        self.session_ttl_s = int(4 * settings.session_gap_s)
        self.user_ttl_s = settings.seen_ttl_s

    def apply(self, events: EventBatch, reads: BatchReads, batch: WriteBatch) -> None:
        """One read of item vectors and of user states, one update per user and state."""
        vectors = reads.item_vectors if events.interactions else {}
        per_user: dict[str, list[Interaction]] = defaultdict(list)
        for e in events.interactions:
            if e.item_id in vectors and self.weights.get(e.type, 0.0) != 0.0:
                per_user[e.user_id].append(e)
        if not per_user:
            return
        users = list(per_user)
        session_keys = [self.keys.session_embedding(u) for u in users]
        user_keys = [self.keys.user_embedding(u) for u in users]
        stored = reads.states(session_keys + user_keys)
        for n, user in enumerate(users):
            evs = per_user[user]
            for key, raw, half_life, gap, ttl in (
                (
                    session_keys[n],
                    stored[n],
                    self.session_half_life_s,
                    self.session_gap_s,
                    self.session_ttl_s,
                ),
                (
                    user_keys[n],
                    stored[len(users) + n],
                    self.user_half_life_s,
                    None,
                    self.user_ttl_s,
                ),
            ):
                state = EmbeddingState.from_bytes(raw, self.dim) if raw is not None else None
                updated = self._fold(state, evs, vectors, half_life, gap)
                if updated is not None and updated is not state:
                    batch.set_bytes(key, updated.to_bytes(), ttl_s=ttl)

    def _fold(
        self,
        state: EmbeddingState | None,
        evs: list[Interaction],
        vectors: dict[str, Vector],
        half_life_s: float,
        gap_s: float | None,
    ) -> EmbeddingState | None:
        # Most users have one event in a batch: the scalar update is several times cheaper
        # than setting up the vectorised one.
        if len(evs) == 1:
            e = evs[0]
            return update(
                state,
                vectors[e.item_id],
                self.weights[e.type],
                e.ts,
                half_life_s=half_life_s,
                session_gap_s=gap_s,
            )
        return update_many(
            state,
            np.stack([vectors[e.item_id] for e in evs]),
            np.array([self.weights[e.type] for e in evs], dtype=np.float64),
            np.array([e.ts for e in evs], dtype=np.int64),
            half_life_s=half_life_s,
            session_gap_s=gap_s,
        )
