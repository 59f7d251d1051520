"""Item-to-item co-visitation: pairs of items a user engaged with close together in time,
forward-decayed, with a bounded list of best neighbours per item."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from features.batch import WriteBatch
from features.decay import decay_rate, forward_weight
from features.keys import Keys
from features.landmarks import Ranked, batch_landmark, decayed, landmark_factor
from features.settings import FeatureSettings
from features.store import Store

#: Field of the landmarks hash for co-visitation. It moves like the other families' when an
#: event would push the stored exponent too far (every ~35 years of event time at the 30-day
#: half-life): one script rescales every item's row in the same commit (``zscale_prefix``).
FAMILY = "covis"


class Visit(NamedTuple):
    """One interaction of a user, in offset order (a tuple: one is built per event)."""

    item_id: str
    ts_ms: int
    positive: bool


class Covisitation:
    """Counts (item, neighbour) pairs within a user's recent history.

    The history of an event is the ``window`` most recent distinct items the user touched
    before it (by event time, ties by id, as the user's seen-set orders them) that are at most
    ``max_gap_s`` older. Only positive events (not skip or dismiss) create pairs.

    Examples:
        >>> from features.stores.memory_store import InMemoryStore
        >>> covis, store, batch = Covisitation(Keys("t")), InMemoryStore(), WriteBatch()
        >>> visits = [Visit("a", 1_000, True), Visit("b", 2_000, True), Visit("c", 3_000, True)]
        >>> covis.add(batch, {}, {"u": []}, {"u": visits})
        >>> store.commit(batch)
        >>> [[item for item, _ in row] for row in covis.neighbours_many(store, ["a"], 5, 3.0)]
        [['c', 'b']]
    """

    def __init__(
        self,
        keys: Keys,
        *,
        half_life_s: float = 7 * 86400.0,
        window: int = 5,
        max_gap_s: float = 3600.0,
        max_neighbours: int = 100,
        symmetric: bool = False,
    ) -> None:
        self.keys = keys
        self.half_life_s = half_life_s
        self.rate = decay_rate(half_life_s)
        self.window = window
        self.max_gap_ms = int(max_gap_s * 1000)
        self.max_neighbours = max_neighbours
        # One-directional lists hold only what users went on to next ("after X, Y"): half the
        # writes, and the question a next-item feed asks anyway.
        self.symmetric = symmetric
        # The event's own item may sit among the recent ones, so one more is read.
        self.history_size = window + 1

    @classmethod
    def from_settings(cls, keys: Keys, features: FeatureSettings) -> Covisitation:
        """The co-visitation state as the configuration shapes it: the worker writes with
        it, and every reader must decay by the same settings."""
        return cls(
            keys,
            half_life_s=features.covisitation_half_life_s,
            window=features.covisitation_window,
            max_gap_s=features.covisitation_max_gap_s,
            max_neighbours=features.covisitation_neighbours,
            symmetric=features.covisitation_symmetric,
        )

    def add(
        self,
        batch: WriteBatch,
        landmarks: Mapping[str, str],
        history: Mapping[str, Sequence[tuple[str, float]]],
        visits: Mapping[str, Sequence[Visit]],
    ) -> None:
        """Queue pair increments.

        ``history`` holds each user's ``history_size`` latest seen items (item, ts ms) as
        they were before the batch, and ``visits`` each user's events in offset order.
        """
        if not any(visits.values()):
            return
        times = [v.ts_ms / 1000.0 for vs in visits.values() for v in vs]
        landmark = batch_landmark(
            batch,
            self.keys,
            landmarks,
            FAMILY,
            self.rate,
            (min(times), max(times)),
            lambda factor: batch.zscale_prefix(self.keys.covisitation_prefix(), factor),
        )
        # item -> neighbour -> amount, merged in plain dicts before touching the batch.
        pairs: dict[str, dict[str, float]] = {}
        for user, user_visits in visits.items():
            for item, neighbours, ts_ms in self._pairs(history.get(user, ()), user_visits):
                amount = forward_weight(1.0, ts_ms / 1000.0, landmark, self.rate)
                for neighbour in neighbours:
                    # Stored under the earlier item: neighbours(X) are what followed X.
                    theirs = pairs.setdefault(neighbour, {})
                    theirs[item] = theirs.get(item, 0.0) + amount
                    if self.symmetric:
                        mine = pairs.setdefault(item, {})
                        mine[neighbour] = mine.get(neighbour, 0.0) + amount
        for item in sorted(pairs):
            key = self.keys.covisitation(item)
            batch.zincrby_many(key, pairs[item])
            batch.zkeeptop(key, self.max_neighbours)

    def _pairs(
        self,
        history: Iterable[tuple[str, float]],
        visits: Sequence[Visit],
    ) -> Iterable[tuple[str, list[str], int]]:
        """Each positive visit with the recent items it pairs with."""
        # The user's recent items as their seen-set will hold them, newest first, ordered as
        # Redis orders a sorted set read backwards: by time, then by id, both descending.
        recent: list[tuple[float, str]] = sorted(((ts, i) for i, ts in history), reverse=True)
        for visit in visits:
            if visit.positive:
                oldest_ms = visit.ts_ms - self.max_gap_ms
                others = [(ts, i) for ts, i in recent if i != visit.item_id][: self.window]
                neighbours = [i for ts, i in others if ts >= oldest_ms]
                if neighbours:
                    yield visit.item_id, neighbours, visit.ts_ms
            recent = self._remember(recent, visit)

    def _remember(self, recent: list[tuple[float, str]], visit: Visit) -> list[tuple[float, str]]:
        """The recent list after ``visit`` (a later time wins, as ZADD GT does)."""
        for index, (ts, item) in enumerate(recent):
            if item == visit.item_id:
                if ts >= visit.ts_ms:
                    return recent
                del recent[index]
                break
        recent.append((float(visit.ts_ms), visit.item_id))
        recent.sort(reverse=True)
        del recent[self.history_size :]
        return recent

    def decayed(
        self, rows: Sequence[Ranked], landmarks: Mapping[str, str], now_s: float
    ) -> list[Ranked]:
        """Stored neighbour rows (``store.top`` of each item's key) decayed to ``now_s``,
        given the landmarks hash as read."""
        factor = landmark_factor(landmarks, FAMILY, self.rate, now_s)
        return [decayed(row, factor) for row in rows]

    def neighbours_many(
        self, store: Store, item_ids: Sequence[str], k: int, now_s: float
    ) -> list[Ranked]:
        """Each item's ``k`` strongest co-visited neighbours with decayed scores: one
        landmark read and one batched read."""
        if not item_ids:
            return []
        landmarks = store.hgetall(self.keys.landmarks())
        rows = store.top_many([self.keys.covisitation(i) for i in item_ids], k)
        return self.decayed(rows, landmarks, now_s)
