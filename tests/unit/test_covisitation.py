"""Co-visitation pairs, decay, bounds and batch-split invariance."""

from __future__ import annotations

import pytest

from features.batch import WriteBatch
from features.covisitation import Covisitation, Visit
from features.keys import Keys
from features.seen import SeenSet
from features.stores.memory_store import InMemoryStore
from tests.reads import neighbours

KEYS = Keys("t")
MIN = 60_000


def run(covis: Covisitation, store: InMemoryStore, visits: dict[str, list[Visit]]) -> None:
    """One batch, reading history from the seen-set as the processor does."""
    seen = SeenSet(KEYS, max_items=100, ttl_s=3600)
    users = list(visits)
    history = dict(
        zip(users, store.top_many([KEYS.seen(u) for u in users], covis.history_size), strict=True)
    )
    batch = WriteBatch()
    covis.add(batch, store.hgetall(KEYS.landmarks()), history, visits)
    for user, vs in visits.items():
        seen.add(batch, user, {v.item_id: v.ts_ms for v in vs})
    store.commit(batch)


def test_symmetric_pairs_within_the_window_are_counted_both_ways() -> None:
    covis = Covisitation(KEYS, window=2, half_life_s=1e9, symmetric=True)
    store = InMemoryStore()
    run(covis, store, {"u": [Visit(i, n * MIN, True) for n, i in enumerate("abcd")]})
    # window 2: b-a, c-b, c-a, d-c, d-b (not d-a)
    assert {i for i, _ in neighbours(covis, store, "d", 10, 0.0)} == {"c", "b"}
    assert {i for i, _ in neighbours(covis, store, "a", 10, 0.0)} == {"b", "c"}
    scores = dict(neighbours(covis, store, "c", 10, 0.0))
    assert scores == pytest.approx({"a": 1.0, "b": 1.0, "d": 1.0}, rel=1e-6)


def test_negatives_and_old_history_do_not_pair() -> None:
    covis = Covisitation(KEYS, window=5, max_gap_s=600)
    store = InMemoryStore()
    visits = [Visit("a", 0, True), Visit("b", 1 * MIN, False), Visit("c", 30 * MIN, True)]
    run(covis, store, {"u": visits})
    assert neighbours(covis, store, "b", 10, 0.0) == []  # b was skipped: it creates no pair
    assert neighbours(covis, store, "c", 10, 0.0) == []  # a and b are 29+ minutes older


def test_scores_decay_with_event_time() -> None:
    covis = Covisitation(KEYS, window=1, half_life_s=3600.0)
    store = InMemoryStore()
    run(covis, store, {"u": [Visit("a", 0, True), Visit("b", 1000, True)]})
    run(covis, store, {"v": [Visit("a", 3_600_000, True), Visit("c", 3_601_000, True)]})
    scores = dict(neighbours(covis, store, "a", 10, now_s=3601.0))
    assert scores["c"] == pytest.approx(2 * scores["b"], rel=1e-6)


def test_neighbour_lists_are_bounded() -> None:
    covis = Covisitation(KEYS, window=1, max_neighbours=3)
    store = InMemoryStore()
    run(
        covis,
        store,
        {f"u{n}": [Visit("hub", n, True), Visit(f"x{n}", n + 1, True)] for n in range(10)},
    )
    assert store.zcard(KEYS.covisitation("hub")) == 3


@pytest.mark.parametrize("symmetric", [False, True])
def test_the_same_events_give_the_same_pairs_however_batches_are_cut(symmetric: bool) -> None:
    visits = [
        Visit(f"i{n % 7}", 1000 * n + (500 if n % 3 == 0 else 0), n % 5 != 0) for n in range(40)
    ]
    whole, split = InMemoryStore(), InMemoryStore()
    covis = Covisitation(KEYS, window=3, symmetric=symmetric)
    run(covis, whole, {"u": visits})
    for start in range(0, 40, 7):
        run(covis, split, {"u": visits[start : start + 7]})
    prefix = KEYS.covisitation("")
    da, db = whole.dump(prefix), split.dump(prefix)
    assert da and da.keys() == db.keys()
    for key in da:
        assert da[key] == pytest.approx(db[key], rel=1e-9)


def test_by_default_lists_hold_what_followed() -> None:
    covis = Covisitation(KEYS, window=2, half_life_s=1e9)
    store = InMemoryStore()
    run(covis, store, {"u": [Visit(i, n * MIN, True) for n, i in enumerate("abc")]})
    assert {i for i, _ in neighbours(covis, store, "a", 10, 0.0)} == {"b", "c"}
    assert {i for i, _ in neighbours(covis, store, "b", 10, 0.0)} == {"c"}
    assert neighbours(covis, store, "c", 10, 0.0) == []
