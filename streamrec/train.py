"""`streamrec train embeddings`: collaborative item embeddings from a recorded interaction log,
published as item upserts so retrieval moves from content to behaviour."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from features.collab import train_item_embeddings
from features.seen import NEGATIVE_TYPES
from streams.data.jsonl import read_events
from streams.schema import EventValidator, Interaction, Item


def positive_interactions(events: Iterable[object]) -> Iterator[tuple[str, str, int]]:
    """(session or user, item, ts) of every interaction that is not a skip or a dismiss."""
    for event in events:
        if isinstance(event, Interaction) and event.type not in NEGATIVE_TYPES:
            yield (event.session_id or event.user_id, event.item_id, event.ts)


def latest_items(lines: Iterable[bytes], validator: EventValidator) -> dict[str, Item]:
    """The last record of each item in a recorded items log (deletes drop the item)."""
    out: dict[str, Item] = {}
    for event in read_events(lines, validator, Counter()):
        if isinstance(event, Item):
            if event.op == "delete":
                out.pop(event.item_id, None)
            else:
                out[event.item_id] = event
    return out


def embedding_upserts(
    log: Path,
    validator: EventValidator,
    *,
    items_log: Path | None,
    window: int,
    min_count: int,
    seed: int,
) -> tuple[list[Item], dict[str, Any]]:
    """Train on ``log`` and return one item upsert per embedded item, plus a report.

    Items topic records must be whole (the topic is compacted: only the last record of an
    item survives), so when ``items_log`` is given each upsert is the item's last record with
    the new embedding; otherwise it carries the id and the embedding only.
    """
    started = time.perf_counter()
    rejected: Counter[str] = Counter()
    with log.open("rb") as lines:
        interactions = list(positive_interactions(read_events(lines, validator, rejected)))
    vectors = train_item_embeddings(
        interactions, dim=validator.embedding_dim, window=window, min_count=min_count, seed=seed
    )
    known: dict[str, Item] = {}
    if items_log is not None:
        with items_log.open("rb") as lines:
            known = latest_items(lines, validator)
    now_ms = int(time.time() * 1000)
    upserts = []
    for item_id, vector in sorted(vectors.items()):
        embedding = [round(float(x), 7) for x in vector]
        base = known.get(item_id)
        if base is not None:
            upserts.append(msgspec.structs.replace(base, embedding=embedding, ts=now_ms))
        else:
            upserts.append(Item(item_id=item_id, ts=now_ms, embedding=embedding))
    report = {
        "interactions": len(interactions),
        "rejected_lines": sum(rejected.values()),
        "items_embedded": len(upserts),
        "with_full_record": sum(1 for u in upserts if u.item_id in known),
        "dim": validator.embedding_dim,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return upserts, report
