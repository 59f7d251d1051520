"""Trending counters through the write batch and the in-memory store."""

from __future__ import annotations

import pytest

from features.batch import WriteBatch
from features.decay import MAX_EXPONENT, decay_rate
from features.errors import ConflictError
from features.keys import Keys
from features.stores.memory_store import InMemoryStore
from features.trending import Counted, Trending
from tests.reads import trending_rising, trending_top

HOUR = 3600.0
NEWS = Keys.category_scope("news")


def apply(trending: Trending, store: InMemoryStore, events: list[Counted]) -> None:
    batch = WriteBatch()

    def known() -> list[str]:
        return [c for c, _ in store.top(trending.keys.categories(), 100)]

    trending.add(batch, store.hgetall(trending.keys.landmarks()), known, events)
    store.commit(batch)


def landmark(store: InMemoryStore, trending: Trending, half_life: float) -> float:
    return float(store.hgetall(trending.keys.landmarks())[Trending.family(half_life)])


def test_scores_are_weighted_and_decay_per_half_life() -> None:
    trending = Trending(Keys("t"), [HOUR, 24 * HOUR], {"view": 1.0, "purchase": 8.0})
    store = InMemoryStore()
    t0 = int(100 * HOUR * 1000)
    apply(trending, store, [Counted("a", "view", t0), Counted("b", "purchase", t0)])
    later = 101 * HOUR
    assert dict(trending_top(trending, store, HOUR, 10, later)) == pytest.approx(
        {"a": 0.5, "b": 4.0}
    )
    assert dict(trending_top(trending, store, 24 * HOUR, 10, later)) == pytest.approx(
        {"a": 0.5 ** (1 / 24), "b": 8.0 * 0.5 ** (1 / 24)}
    )
    assert trending.all_time(store, 10) == [("b", 8.0), ("a", 1.0)]


def test_categories_have_their_own_counters() -> None:
    trending = Trending(Keys("t"), [HOUR], {"click": 1.0})
    store = InMemoryStore()
    apply(
        trending,
        store,
        [
            Counted("a", "click", 0, "news"),
            Counted("b", "click", 0, "sports"),
            Counted("c", "click", 0),
        ],
    )
    assert [i for i, _ in trending_top(trending, store, HOUR, 10, 0.0, NEWS)] == ["a"]
    assert [i for i, _ in trending_top(trending, store, HOUR, 10, 0.0)] == ["c", "b", "a"]
    assert sorted(c for c, _ in store.top(trending.keys.categories(), 10)) == ["news", "sports"]


def test_zero_weight_types_do_not_count() -> None:
    trending = Trending(Keys("t"), [HOUR], {"view": 1.0, "skip": 0.0})
    store = InMemoryStore()
    apply(trending, store, [Counted("a", "skip", 0), Counted("b", "view", 0)])
    assert [item for item, _ in trending_top(trending, store, HOUR, 10, 0.0)] == ["b"]


def test_landmark_rotation_rescales_every_scope_and_is_invisible_to_readers() -> None:
    trending = Trending(Keys("r"), [60.0], {"view": 1.0})
    store = InMemoryStore()
    t0 = 1_000_000.0
    apply(
        trending,
        store,
        [
            Counted("a", "view", int(t0 * 1000), "news"),
            Counted("b", "view", int(t0 * 1000), "news"),
        ],
    )
    before = landmark(store, trending, 60.0)
    t1 = float(int(before + 1.5 * MAX_EXPONENT / decay_rate(60.0)))
    apply(trending, store, [Counted("a", "view", int(t1 * 1000), "news")])
    assert landmark(store, trending, 60.0) > before
    expected_b = 0.5 ** ((t1 - t0) / 60.0)
    for scope in ("global", NEWS):
        scores = dict(trending_top(trending, store, 60.0, 10, t1, scope))
        assert scores["a"] == pytest.approx(1.0 + expected_b)
        assert scores["b"] == pytest.approx(expected_b, rel=1e-9, abs=1e-300)


def test_a_concurrent_landmark_change_makes_the_commit_conflict() -> None:
    trending = Trending(Keys("c"), [HOUR], {"view": 1.0})
    store = InMemoryStore()
    stale = store.hgetall(trending.keys.landmarks())  # read by "worker A": no landmark yet
    apply(trending, store, [Counted("x", "view", 5_000_000)])  # "worker B" sets one
    batch = WriteBatch()
    trending.add(batch, stale, list, [Counted("y", "view", 9_000_000)])
    with pytest.raises(ConflictError):
        store.commit(batch)
    assert [i for i, _ in trending_top(trending, store, HOUR, 10, 9_000.0)] == [
        "x"
    ]  # nothing half-applied


def test_rising_finds_the_item_that_accelerates() -> None:
    trending = Trending(Keys("t"), [HOUR, 24 * HOUR], {"view": 1.0})
    store = InMemoryStore()
    day_ms = int(24 * HOUR * 1000)
    # Every 10 minutes for 8 days: long enough for the 24 h counter to settle (1 - 2^-8).
    steady = [Counted("steady", "view", 8 * day_ms - i * 600_000) for i in range(8 * 144)]
    burst = [Counted("burst", "view", 8 * day_ms - i * 30_000) for i in range(40)]  # 20 min
    apply(trending, store, steady + burst)
    rising = trending_rising(trending, store, 2, now_s=8 * 24 * HOUR)
    assert rising[0][0] == "burst"
    ratios = dict(rising)
    assert ratios["burst"] > 5.0
    assert ratios["steady"] == pytest.approx(1.0, rel=0.2)


def test_top_of_an_empty_counter_is_empty() -> None:
    trending = Trending(Keys("t"), [HOUR], {"view": 1.0})
    assert trending_top(trending, InMemoryStore(), HOUR, 5, 0.0) == []
    assert trending_rising(trending, InMemoryStore(), 5, 0.0) == []
