"""Trending: forward-decayed weighted counts per half-life, over all items and per category,
plus undecayed all-time popularity and "rising" items.

Each half-life is one family of sorted sets (global and one per category) that share a
landmark. Writers guard the landmark they used, so a concurrent rotation by another worker
makes their commit fail and recompute instead of mixing two frames of reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from features.batch import WriteBatch
from features.decay import decay_rate, forward_weight
from features.keys import GLOBAL, Keys
from features.landmarks import Ranked, batch_landmark, decayed, landmark_factor
from features.store import Store

#: How many of the short counter's top items are considered for :meth:`Trending.rising`.
RISING_CANDIDATES = 200


class Counted(NamedTuple):
    """One interaction as the counters see it (a tuple: one is built per event)."""

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
        >>> stored = store.top(Keys("t").trending(3600.0), 5)
        >>> landmarks = store.hgetall(Keys("t").landmarks())
        >>> [(i, round(s, 6)) for i, s in trending.decayed(stored, landmarks, 3600.0, 10_800.0)]
        [('a', 1.0)]
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

    def factor(self, landmarks: Mapping[str, str], half_life_s: float, now_s: float) -> float:
        """What turns one half-life's stored counts into counts decayed to ``now_s``, given
        the landmarks hash as read (0 before its first count)."""
        rate = decay_rate(half_life_s)
        return landmark_factor(landmarks, self.family(half_life_s), rate, now_s) or 0.0

    def decayed(
        self, stored: Ranked, landmarks: Mapping[str, str], half_life_s: float, now_s: float
    ) -> Ranked:
        """A counter's stored top (``store.top`` of its key) decayed to ``now_s``."""
        rate = decay_rate(half_life_s)
        return decayed(stored, landmark_factor(landmarks, self.family(half_life_s), rate, now_s))

    def all_time(self, store: Store, k: int) -> list[tuple[str, float]]:
        """The ``k`` items with the most weighted interactions ever."""
        return store.top(self.keys.popularity_all_time(), k)

    def rising(
        self,
        short: Ranked,
        long_stored: Sequence[float | None],
        landmarks: Mapping[str, str],
        now_s: float,
        k: int,
        *,
        min_short_score: float = 1.0,
    ) -> Ranked:
        """Items whose short-half-life count outruns their long one, most accelerated first.

        ``short`` is the short counter's decayed top (the candidates, :data:`RISING_CANDIDATES`
        of them), ``long_stored`` the long counter's stored scores of the same items. For an
        item interacted with at a steady rate, a counter with half-life ``h`` settles at
        ``rate · h / ln 2``, so ``(short / h_short) / (long / h_long)`` is 1 for a steady item
        and grows with acceleration.
        """
        if len(self.half_lives_s) < 2:
            return []
        short_h, long_h = self.half_lives_s[0], self.half_lives_s[-1]
        long_factor = landmark_factor(landmarks, self.family(long_h), decay_rate(long_h), now_s)
        if long_factor is None:
            return []
        ratios = [
            (item, (s / short_h) / ((raw * long_factor) / long_h))
            for (item, s), raw in zip(short, long_stored, strict=True)
            if raw and s >= min_short_score
        ]
        ratios.sort(key=lambda r: (r[1], r[0]), reverse=True)
        return ratios[:k]
