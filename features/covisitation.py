"""Item-to-item co-visitation: pairs of items a user engaged with close together in time,
forward-decayed, with a bounded list of best neighbours per item."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from features.batch import WriteBatch
from features.decay import decay_rate, forward_weight, read_factor
from features.keys import Keys
from features.store import Store
from features.trending import aligned_landmark

#: Field of the landmarks hash for co-visitation. With a 7-day half-life the stored exponent
#: stays below 300 for ~8 years after the landmark; rescaling every item's list at once is not
#: an atomic option, so a deployment that outlives that re-landmarks offline.
FAMILY = "covis"


@dataclass(frozen=True, slots=True)
class Visit:
    """One interaction of a user, in offset order."""

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
        >>> [item for item, _ in covis.neighbours(store, "b", 5, now_s=3.0)]
        ['c', 'a']
    """

    def __init__(
        self,
        keys: Keys,
        *,
        half_life_s: float = 7 * 86400.0,
        window: int = 5,
        max_gap_s: float = 3600.0,
        max_neighbours: int = 100,
    ) -> None:
        self.keys = keys
        self.half_life_s = half_life_s
        self.rate = decay_rate(half_life_s)
        self.window = window
        self.max_gap_ms = int(max_gap_s * 1000)
        self.max_neighbours = max_neighbours
        # The event's own item may sit among the recent ones, so one more is read.
        self.history_size = window + 1

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
        stored = landmarks.get(FAMILY)
        batch.guard(self.keys.landmarks(), FAMILY, stored)
        if stored is None:
            first = min(v.ts_ms for vs in visits.values() for v in vs)
            landmark = aligned_landmark(first / 1000.0)
            batch.hset(self.keys.landmarks(), {FAMILY: repr(landmark)})
        else:
            landmark = float(stored)
        touched: set[str] = set()
        for user, user_visits in visits.items():
            for item, neighbour, ts_ms in self._pairs(history.get(user, ()), user_visits):
                amount = forward_weight(1.0, ts_ms / 1000.0, landmark, self.rate)
                batch.zincrby(self.keys.covisitation(item), neighbour, amount)
                batch.zincrby(self.keys.covisitation(neighbour), item, amount)
                touched.update((item, neighbour))
        for item in sorted(touched):
            batch.zkeeptop(self.keys.covisitation(item), self.max_neighbours)

    def _pairs(
        self, history: Iterable[tuple[str, float]], visits: Sequence[Visit]
    ) -> Iterable[tuple[str, str, int]]:
        # The user's recent items as their seen-set will hold them: item -> latest ts.
        recent = {item: ts for item, ts in history}
        for visit in visits:
            if visit.positive:
                ranked = sorted(recent.items(), key=lambda r: (r[1], r[0]), reverse=True)
                others = [r for r in ranked if r[0] != visit.item_id][: self.window]
                for prev, ts in others:
                    if visit.ts_ms - self.max_gap_ms <= ts:
                        yield visit.item_id, prev, visit.ts_ms
            if visit.ts_ms > recent.get(visit.item_id, float("-inf")):
                recent[visit.item_id] = visit.ts_ms
            if len(recent) > 4 * self.history_size:
                keep = sorted(recent.items(), key=lambda r: (r[1], r[0]), reverse=True)
                recent = dict(keep[: self.history_size])

    def neighbours(
        self, store: Store, item_id: str, k: int, now_s: float
    ) -> list[tuple[str, float]]:
        """An item's ``k`` strongest co-visited neighbours with decayed scores."""
        landmark = store.hgetall(self.keys.landmarks()).get(FAMILY)
        if landmark is None:
            return []
        factor = read_factor(now_s, float(landmark), self.rate)
        return [(i, s * factor) for i, s in store.top(self.keys.covisitation(item_id), k)]
