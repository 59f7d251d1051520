"""Decayed popularity through the write batch and the in-memory store."""

from __future__ import annotations

import pytest

from features.batch import WriteBatch
from features.decay import MAX_EXPONENT, decay_rate
from features.keys import Keys
from features.popularity import DecayedPopularity
from features.stores.memory_store import InMemoryStore

HOUR = 3600.0


def _apply(
    pop: DecayedPopularity, store: InMemoryStore, events: list[tuple[str, str, int]]
) -> None:
    batch = WriteBatch()
    pop.add(batch, store.hgetall(pop.keys.landmarks()), events)
    store.commit(batch)


def test_scores_are_weighted_and_decay_per_half_life() -> None:
    pop = DecayedPopularity(Keys("t"), [HOUR, 24 * HOUR], {"view": 1.0, "purchase": 8.0})
    store = InMemoryStore()
    t0 = 100 * HOUR
    _apply(pop, store, [("a", "view", int(t0 * 1000)), ("b", "purchase", int(t0 * 1000))])
    later = t0 + HOUR
    assert dict(pop.top(store, HOUR, 10, later)) == pytest.approx({"a": 0.5, "b": 4.0})
    assert dict(pop.top(store, 24 * HOUR, 10, later)) == pytest.approx(
        {"a": 0.5 ** (1 / 24), "b": 8.0 * 0.5 ** (1 / 24)}
    )


def test_zero_weight_types_do_not_count() -> None:
    pop = DecayedPopularity(Keys("t"), [HOUR], {"view": 1.0, "skip": 0.0})
    store = InMemoryStore()
    _apply(pop, store, [("a", "skip", 0), ("b", "view", 0)])
    assert [item for item, _ in pop.top(store, HOUR, 10, 0.0)] == ["b"]


def test_landmark_rotation_is_invisible_to_readers() -> None:
    rotating = DecayedPopularity(Keys("r"), [60.0], {"view": 1.0})
    store = InMemoryStore()
    t0 = 1_000_000.0
    _apply(rotating, store, [("a", "view", int(t0 * 1000)), ("b", "view", int(t0 * 1000))])
    landmark_before = float(
        store.hgetall(rotating.keys.landmarks())[rotating.keys.popularity(60.0)]
    )
    # An event far enough ahead forces the landmark to move.
    t1 = float(int(landmark_before + 1.5 * MAX_EXPONENT / decay_rate(60.0)))
    _apply(rotating, store, [("a", "view", int(t1 * 1000))])
    landmark_after = float(store.hgetall(rotating.keys.landmarks())[rotating.keys.popularity(60.0)])
    assert landmark_after > landmark_before
    scores = dict(rotating.top(store, 60.0, 10, t1))
    # b was seen once, long ago: its decayed score is exp(-λ·(t1 − t0)), a's is that plus 1.
    expected_b = 0.5 ** ((t1 - t0) / 60.0)
    assert scores["a"] == pytest.approx(1.0 + expected_b)
    assert scores["b"] == pytest.approx(expected_b, rel=1e-9, abs=1e-300)


def test_top_of_an_empty_counter_is_empty() -> None:
    pop = DecayedPopularity(Keys("t"), [HOUR], {"view": 1.0})
    assert pop.top(InMemoryStore(), HOUR, 5, 0.0) == []
