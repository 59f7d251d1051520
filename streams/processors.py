"""Processors: pure functions from a batch of decoded events plus current state to writes.

The runtime (Kafka or embedded) decodes, deduplicates and hands each processor the batch;
the processor reads what it needs from the store and queues its writes into one WriteBatch,
which the runtime commits atomically with the partition offsets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from features.batch import WriteBatch
from features.catalog import Catalog
from features.keys import Keys
from features.popularity import DecayedPopularity
from features.seen import SeenSet
from features.settings import FeatureSettings
from features.store import Store
from streams.schema import Interaction, Item


@dataclass
class EventBatch:
    """The decoded, not-yet-applied events of one poll, in offset order per partition."""

    interactions: list[Interaction] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.interactions) + len(self.items)


class Processor(Protocol):
    """Turns an event batch into state writes."""

    name: str

    def apply(self, events: EventBatch, store: Store, batch: WriteBatch) -> None:
        """Read current state from ``store`` as needed and queue writes into ``batch``."""
        ...


class PopularityProcessor:
    """Interactions → forward-decayed popularity per half-life."""

    name = "popularity"

    def __init__(self, popularity: DecayedPopularity) -> None:
        self.popularity = popularity

    def apply(self, events: EventBatch, store: Store, batch: WriteBatch) -> None:
        """One landmark read, then one merged increment per (half-life, item)."""
        if not events.interactions:
            return
        landmarks = store.hgetall(self.popularity.keys.landmarks())
        self.popularity.add(
            batch, landmarks, ((e.item_id, e.type, e.ts) for e in events.interactions)
        )


class SeenProcessor:
    """Interactions → each user's bounded seen-set."""

    name = "seen"

    def __init__(self, seen: SeenSet) -> None:
        self.seen = seen

    def apply(self, events: EventBatch, store: Store, batch: WriteBatch) -> None:
        """Group by user so each user's set is written once per batch."""
        per_user: dict[str, dict[str, int]] = defaultdict(dict)
        for e in events.interactions:
            items = per_user[e.user_id]
            items[e.item_id] = max(e.ts, items.get(e.item_id, 0))
        for user_id, items in per_user.items():
            self.seen.add(batch, user_id, items)


class CatalogProcessor:
    """Item events → catalog records (latest event per item wins within a batch)."""

    name = "catalog"

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def apply(self, events: EventBatch, store: Store, batch: WriteBatch) -> None:
        """Write each item's last upsert or delete of the batch."""
        latest: dict[str, Item] = {}
        for item in events.items:
            latest[item.item_id] = item
        for item in latest.values():
            if item.op == "delete":
                self.catalog.remove(batch, item.item_id, ts_ms=item.ts)
            else:
                self.catalog.upsert(
                    batch,
                    item.item_id,
                    category=item.category,
                    creator=item.creator,
                    available=item.available,
                    created_at_ms=item.created_at if item.created_at is not None else item.ts,
                    ts_ms=item.ts,
                )


def default_processors(keys: Keys, settings: FeatureSettings) -> Sequence[Processor]:
    """The processors every worker runs, in order."""
    return (
        CatalogProcessor(Catalog(keys)),
        PopularityProcessor(DecayedPopularity(keys, settings.half_lives_s, settings.event_weights)),
        SeenProcessor(SeenSet(keys, max_items=settings.seen_max_items, ttl_s=settings.seen_ttl_s)),
    )
