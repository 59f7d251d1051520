"""Forward-decayed item popularity for several half-lives (the first slice of trending)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from features.batch import WriteBatch
from features.decay import decay_rate, forward_weight, needs_rotation, read_factor, rotation_factor
from features.keys import Keys
from features.store import Store

#: New landmarks are aligned to this many seconds so that replays choose the same ones.
LANDMARK_ALIGN_S = 3600.0


class DecayedPopularity:
    """Per-item popularity counters, one sorted set per half-life, forward-decayed.

    Examples:
        >>> from features.stores.memory_store import InMemoryStore
        >>> from features.batch import WriteBatch
        >>> pop = DecayedPopularity(Keys("t"), [3600.0], {"click": 2.0})
        >>> store, batch = InMemoryStore(), WriteBatch()
        >>> pop.add(batch, store.hgetall(pop.keys.landmarks()), [("a", "click", 7_200_000)])
        >>> store.commit(batch)
        >>> [(item, round(score, 6)) for item, score in pop.top(store, 3600.0, 5, now_s=10_800.0)]
        [('a', 1.0)]
    """

    def __init__(
        self, keys: Keys, half_lives_s: Sequence[float], event_weights: Mapping[str, float]
    ) -> None:
        self.keys = keys
        self.half_lives_s = list(half_lives_s)
        self.event_weights = dict(event_weights)

    def add(
        self,
        batch: WriteBatch,
        landmarks: Mapping[str, str],
        events: Iterable[tuple[str, str, int]],
    ) -> None:
        """Queue the increments for ``(item_id, type, ts_ms)`` events into ``batch``.

        ``landmarks`` is the store's landmark hash as read before the batch. A missing landmark
        is created, and one the batch's newest event would overflow is rotated first.
        """
        weighted = [
            (item, w, ts_ms / 1000.0)
            for item, kind, ts_ms in events
            if (w := self.event_weights.get(kind, 0.0)) != 0.0
        ]
        if not weighted:
            return
        newest = max(t for _, _, t in weighted)
        oldest = min(t for _, _, t in weighted)
        new_landmarks: dict[str, str] = {}
        for half_life in self.half_lives_s:
            key = self.keys.popularity(half_life)
            rate = decay_rate(half_life)
            stored = landmarks.get(key)
            if stored is None:
                landmark = math.floor(oldest / LANDMARK_ALIGN_S) * LANDMARK_ALIGN_S
                new_landmarks[key] = repr(landmark)
            else:
                landmark = float(stored)
                if needs_rotation(newest, landmark, rate):
                    moved = math.floor(newest / LANDMARK_ALIGN_S) * LANDMARK_ALIGN_S
                    batch.zscale(key, rotation_factor(landmark, moved, rate))
                    landmark = moved
                    new_landmarks[key] = repr(landmark)
            for item, weight, t in weighted:
                batch.zincrby(key, item, forward_weight(weight, t, landmark, rate))
        batch.hset(self.keys.landmarks(), new_landmarks)

    def top(
        self, store: Store, half_life_s: float, k: int, now_s: float
    ) -> list[tuple[str, float]]:
        """The ``k`` most popular items with their decayed scores at ``now_s``."""
        key = self.keys.popularity(half_life_s)
        landmark = store.hgetall(self.keys.landmarks()).get(key)
        if landmark is None:
            return []
        factor = read_factor(now_s, float(landmark), decay_rate(half_life_s))
        return [(item, score * factor) for item, score in store.top(key, k)]
