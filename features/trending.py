"""Trending: forward-decayed weighted counts per half-life, over all items and per category,
plus undecayed all-time popularity and "rising" items.

Each half-life is one family of sorted sets (global and one per category) that share a
landmark. Writers guard the landmark they used, so a concurrent rotation by another worker
makes their commit fail and recompute instead of mixing two frames of reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from features.batch import WriteBatch
from features.decay import (
    decay_rate,
    forward_weight,
    read_factor,
)
from features.keys import GLOBAL, Keys
from features.landmarks import batch_landmark
from features.store import Store


@dataclass(frozen=True, slots=True)
class Counted:
    """One interaction as the counters see it."""

    item_id: str
    kind: str
    ts_ms: int
    category: str | None = None


class Trending:
    """Decayed counters per (half-life, scope), all-time counts, and rising items.

    Examples:
        >>> from features.stores.memory_store import InMemoryStore
        >>> trending = Trending(Keys("t"), [3600.0], {"click": 2.0})
        >>> store, batch = InMemoryStore(), WriteBatch()
        >>> trending.add(batch, {}, list, [Counted("a", "click", 7_200_000, "news")])
        >>> store.commit(batch)
        >>> [(i, round(s, 6)) for i, s in trending.top(store, 3600.0, 5, now_s=10_800.0)]
        [('a', 1.0)]
        >>> [i for i, _ in trending.top(store, 3600.0, 5, 10_800.0, Keys.category_scope("news"))]
        ['a']
        >>> trending.all_time(store, 5)
        [('a', 2.0)]
    """

    def __init__(
        self, keys: Keys, half_lives_s: Sequence[float], event_weights: Mapping[str, float]
    ) -> None:
        self.keys = keys
        self.half_lives_s = sorted(half_lives_s)
        self.event_weights = dict(event_weights)

    @staticmethod
    def family(half_life_s: float) -> str:
        """Field of the landmarks hash for one half-life."""
        return f"trend:{half_life_s:g}"

    def add(
        self,
        batch: WriteBatch,
        landmarks: Mapping[str, str],
        known_categories: Callable[[], Sequence[str]],
        events: Iterable[Counted],
    ) -> None:
        """Queue the increments for ``events``.

        ``landmarks`` is the landmarks hash as read before the batch; ``known_categories``
        gives the categories already counted, asked only when a rotation must rescale them.
        """
        weighted = [
            (e, w, e.ts_ms / 1000.0) for e in events if (w := self.event_weights.get(e.kind, 0.0))
        ]
        if not weighted:
            return
        newest = max(t for _, _, t in weighted)
        oldest = min(t for _, _, t in weighted)
        batch_categories = {e.category for e, _, _ in weighted if e.category}

        def scopes() -> list[str]:
            every = sorted(set(known_categories()) | batch_categories)
            return [GLOBAL] + [Keys.category_scope(c) for c in every]

        for half_life in self.half_lives_s:
            rate = decay_rate(half_life)

            def rescale(factor: float, half_life: float = half_life) -> None:
                for scope in scopes():
                    batch.zscale(self.keys.trending(half_life, scope), factor)

            family = self.family(half_life)
            span = (oldest, newest)
            landmark = batch_landmark(batch, self.keys, landmarks, family, rate, span, rescale)
            global_key = self.keys.trending(half_life)
            for event, weight, t in weighted:
                amount = forward_weight(weight, t, landmark, rate)
                batch.zincrby(global_key, event.item_id, amount)
                if event.category:
                    scope = Keys.category_scope(event.category)
                    batch.zincrby(self.keys.trending(half_life, scope), event.item_id, amount)
        all_time = self.keys.popularity_all_time()
        for event, weight, _ in weighted:
            batch.zincrby(all_time, event.item_id, weight)
        last_seen: dict[str, float] = {}
        for event, _, t in weighted:
            if event.category:
                last_seen[event.category] = max(t * 1000.0, last_seen.get(event.category, 0.0))
        batch.zadd(self.keys.categories(), last_seen, greater=True)

    def top(
        self, store: Store, half_life_s: float, k: int, now_s: float, scope: str = GLOBAL
    ) -> list[tuple[str, float]]:
        """The ``k`` items with the highest decayed counts at ``now_s``."""
        landmark = store.hgetall(self.keys.landmarks()).get(self.family(half_life_s))
        if landmark is None:
            return []
        factor = read_factor(now_s, float(landmark), decay_rate(half_life_s))
        return [(i, s * factor) for i, s in store.top(self.keys.trending(half_life_s, scope), k)]

    def all_time(self, store: Store, k: int) -> list[tuple[str, float]]:
        """The ``k`` items with the most weighted interactions ever."""
        return store.top(self.keys.popularity_all_time(), k)

    def rising(
        self,
        store: Store,
        k: int,
        now_s: float,
        scope: str = GLOBAL,
        *,
        candidates: int = 200,
        min_short_score: float = 1.0,
    ) -> list[tuple[str, float]]:
        """Items whose short-half-life count outruns their long one, most accelerated first.

        For an item interacted with at a steady rate, a counter with half-life ``h`` settles
        at ``rate · h / ln 2``, so ``(short / h_short) / (long / h_long)`` is 1 for a steady
        item and grows with acceleration. Candidates come from the short counter's top.
        """
        if len(self.half_lives_s) < 2:
            return []
        short_h, long_h = self.half_lives_s[0], self.half_lives_s[-1]
        short = [
            (i, s)
            for i, s in self.top(store, short_h, candidates, now_s, scope)
            if s >= min_short_score
        ]
        if not short:
            return []
        landmark = store.hgetall(self.keys.landmarks()).get(self.family(long_h))
        if landmark is None:
            return []
        long_factor = read_factor(now_s, float(landmark), decay_rate(long_h))
        long_scores = store.zscores(self.keys.trending(long_h, scope), [i for i, _ in short])
        ratios = [
            (item, (s / short_h) / ((raw * long_factor) / long_h))
            for (item, s), raw in zip(short, long_scores, strict=True)
            if raw
        ]
        ratios.sort(key=lambda r: (r[1], r[0]), reverse=True)
        return ratios[:k]
