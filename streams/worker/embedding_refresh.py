"""Collaborative item embeddings learned from the live state, published as item upserts.

On an id-only stream (user, item, time) items carry no embedding, so session and user
embeddings, the ANN replicas and the ``session_ann`` / ``user_ann`` sources have nothing to
work with. :class:`EmbeddingRefresher` reads the co-visitation rows the worker keeps,
computes aligned PPMI-SVD vectors (:class:`features.collab_online.OnlineCollab`) and returns
them as item upserts for the caller to send to the items topic. The worker then stores them
(session and user embeddings start to mean something) and every replica indexes them, like
any other item embedding.

Rules it keeps:

* **Content wins.** The worker records in each catalog record where the item's vector comes
  from (``vector``: see :func:`streams.item_vectors.vector_source`). Items whose vector is
  their own content's are never given a learned one. Upserts carry ``embedding_learned``,
  so the record says "learned" and the next refresh may replace it.
* **Whole records.** The items topic is compacted, so an upsert must be the item's whole
  record: each carries the catalog's category, creator, created_at and availability.
  Unavailable and deleted items get none (an upsert would bring them back).
* **One frame.** A refresh is aligned to the vectors published before. A restarted
  refresher first takes the learned vectors it finds in the store as published.
* **Event time.** :meth:`EmbeddingRefresher.maybe_refresh` refreshes once
  ``learning.embedding_refresh_s`` of event time has passed since the last refresh, so a
  replay gives the same upserts as the live run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from features.catalog import VECTOR_CONTENT, VECTOR_LEARNED, Catalog, ItemMeta
from features.collab_online import OnlineCollab, Vector
from features.covisitation import Covisitation
from features.errors import StoreUnavailableError
from features.keys import Keys
from features.settings import FeatureSettings, LearningSettings
from features.store import Store
from features.trending import Trending
from streams.io.transport import EventSink
from streams.schema import Item

log = logging.getLogger(__name__)

#: Items per store read: each read is one script on Redis, which answers nothing else
#: meanwhile, so a 100k-item catalog is read in short steps.
READ_CHUNK = 500
#: Decimals kept of each published vector component (float32 holds about 7).
DECIMALS = 7


@dataclass
class RefreshStats:
    """What the refresher has done so far."""

    refreshes: int = 0
    published: int = 0
    last_ms: float = 0.0
    total_ms: float = 0.0
    last_embedded: int = 0
    last_published: int = 0
    skipped_content: int = 0


class EmbeddingRefresher:
    """Learns item vectors from co-visitation and returns them as item upserts.

    Build it with the store the worker writes, its keys and the settings; call
    :meth:`maybe_refresh` with the stream's event time after applying events and send what
    it returns to the items topic. Exactly one refresher may publish per deployment: it
    keeps the published frame in memory.

    Examples:
        >>> from streams.worker.pipeline import run_pipeline
        >>> from streams.schema import Interaction
        >>> events = [Interaction(event_id=f"e{u}{n}", user_id=f"u{u}", item_id=f"{g}{n}",
        ...                       type="view", ts=1_000 * (10 * u + n))
        ...           for u in range(6) for g in ["ab"[u % 2]] for n in range(4)]
        >>> store, _, _ = run_pipeline(events, now_ms=100_000)
        >>> refresher = EmbeddingRefresher(store, Keys("sr"), FeatureSettings(embedding_dim=8),
        ...                                LearningSettings(embedding_min_neighbours=2))
        >>> upserts = refresher.maybe_refresh(60_000)
        >>> sorted(u.item_id for u in upserts), upserts[0].embedding_learned
        (['a0', 'a1', 'a2', 'a3', 'b0', 'b1', 'b2', 'b3'], True)
        >>> refresher.maybe_refresh(61_000)  # not due before 300 s of event time
        []
    """

    def __init__(
        self,
        store: Store,
        keys: Keys,
        features: FeatureSettings,
        learning: LearningSettings,
        *,
        seed: int = 0,
    ) -> None:
        self.store = store
        self.keys = keys
        self.every_ms = int(learning.embedding_refresh_s * 1000)
        self.min_events = learning.embedding_refresh_min_events
        self.max_neighbours = features.covisitation_neighbours
        # Only its read functions are used: the decay settings must match the worker's.
        self.covisitation = Covisitation.from_settings(keys, features)
        self.trending = Trending(keys, features.half_lives_s, features.event_weights)
        self.catalog = Catalog(keys)
        self.model = OnlineCollab(
            features.embedding_dim,
            min_count=learning.embedding_min_neighbours,
            threshold=learning.embedding_republish_cosine,
            seed=seed,
        )
        self.stats = RefreshStats()
        self._last_ms: int | None = None
        self._last_events: int | None = None
        self._restored = False

    def maybe_refresh(self, now_ms: int, events: int | None = None) -> list[Item]:
        """:meth:`refresh` if ``embedding_refresh_s`` of event time has passed since the
        last one (the first call refreshes at once); otherwise nothing.

        ``events`` counts the interactions applied so far: given, a refresh also waits for
        ``embedding_refresh_min_events`` new ones, so a replay of a bursty log (hours of
        event time in a few hundred events) does not recompute the whole space per burst.
        """
        if self.every_ms <= 0:
            return []
        if self._last_ms is not None and now_ms - self._last_ms < self.every_ms:
            return []
        if (
            events is not None
            and self._last_events is not None
            and events - self._last_events < self.min_events
        ):
            return []
        self._last_ms, self._last_events = now_ms, events
        return self.refresh(now_ms)

    def refresh(self, now_ms: int) -> list[Item]:
        """Recompute from the store now; the upserts of every item that is new or moved.

        Nothing until at least two items have ``embedding_min_neighbours`` neighbours.
        """
        started = time.perf_counter()
        items = sorted(i for i, _ in self.trending.all_time(self.store, 10**9))
        if not self._restored:
            self._restore(items)
        rows: dict[str, list[tuple[str, float]]] = {}
        for chunk in _chunks(items):
            found = self.covisitation.neighbours_many(
                self.store, chunk, self.max_neighbours, now_s=now_ms / 1000.0
            )
            rows.update(zip(chunk, found, strict=True))
        result = self.model.refresh(rows)
        upserts: list[Item] = []
        published: dict[str, Vector] = {}
        content: list[str] = []
        candidates = list(result.vectors)
        for chunk in _chunks(candidates):
            records = self.catalog.records_and_vectors(self.store, chunk)
            for item_id, (meta, source) in zip(chunk, records, strict=True):
                if source == VECTOR_CONTENT:
                    content.append(item_id)
                elif meta is not None and meta.available:
                    vector = result.vectors[item_id]
                    upserts.append(_upsert(item_id, meta, vector, now_ms))
                    published[item_id] = vector
        self.model.forget(content)
        self.model.publish(published)
        elapsed = (time.perf_counter() - started) * 1000.0
        stats = self.stats
        stats.refreshes += 1
        stats.published += len(upserts)
        stats.last_ms, stats.total_ms = elapsed, stats.total_ms + elapsed
        stats.last_embedded, stats.last_published = result.embedded, len(upserts)
        stats.skipped_content = len(content)
        return upserts

    def _restore(self, items: list[str]) -> None:
        """Take the learned vectors already in the store as published (a restart)."""
        self._restored = True
        learned: list[str] = []
        for chunk in _chunks(items):
            records = self.catalog.records_and_vectors(self.store, chunk)
            learned += [
                i for i, (_, source) in zip(chunk, records, strict=True) if source == VECTOR_LEARNED
            ]
        dim = self.model.dim
        for chunk in _chunks(learned):
            raws = self.store.get_bytes([self.keys.item_embedding(i) for i in chunk])
            self.model.remember(
                {
                    i: np.frombuffer(raw, dtype=np.float32)
                    for i, raw in zip(chunk, raws, strict=True)
                    if raw is not None and len(raw) == 4 * dim
                }
            )


def _chunks(ids: list[str]) -> list[list[str]]:
    return [ids[n : n + READ_CHUNK] for n in range(0, len(ids), READ_CHUNK)]


def _upsert(item_id: str, meta: ItemMeta, vector: Vector, now_ms: int) -> Item:
    """The item's whole record as the catalog has it, with the learned vector."""
    return Item(
        item_id=item_id,
        ts=now_ms,
        category=meta.category,
        creator=meta.creator,
        available=meta.available,
        created_at=meta.created_at_ms,
        embedding=np.round(vector.astype(np.float64), DECIMALS).tolist(),
        embedding_learned=True,
    )


def stream_time_ms(store: Store, keys: Keys, topic: str) -> int | None:
    """The highest event time (ms) the worker applied from ``topic``, over its partitions."""
    marks = store.hgetall(keys.watermarks(topic))
    return max((int(v) for v in marks.values()), default=None)


def follow(
    refresher: EmbeddingRefresher,
    sink: EventSink,
    stop: threading.Event,
    *,
    every_s: float,
    clock: Callable[[], float] = time.time,
    once: bool = False,
) -> None:
    """Refresh every ``every_s`` seconds of wall-clock time until ``stop`` (or once), sending
    the upserts to ``sink``; a store outage skips a refresh."""
    while True:
        try:
            upserts = refresher.refresh(int(clock() * 1000))
        except StoreUnavailableError as exc:
            log.error("embedding refresh skipped: %s", exc)
            upserts = []
        else:
            _send(sink, upserts)
            s = refresher.stats
            log.info(
                "embedding refresh %d: %d items embedded, %d published, %d content kept, %.0f ms",
                s.refreshes,
                s.last_embedded,
                s.last_published,
                s.skipped_content,
                s.last_ms,
            )
        if once or stop.wait(every_s):
            return


def _send(sink: EventSink, upserts: Sequence[Item]) -> None:
    for item in upserts:
        sink.send(item)
    if upserts and sink.flush() > 0:
        log.warning("some embedding upserts are still undelivered")
