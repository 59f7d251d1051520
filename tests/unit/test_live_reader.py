"""The serving reader over state the real worker processors wrote: what health, the dashboard
and the catalog routes read through it."""

from __future__ import annotations

import orjson
import pytest

from features.bandit import Outcome, SourceBandit
from features.batch import WriteBatch
from features.keys import GLOBAL, Keys
from features.settings import FeatureSettings, LearningSettings
from features.store import Store
from serving.funnel.live import LiveReader
from streams.schema import Interaction, Item
from streams.worker.pipeline import run_pipeline
from tests.reads import live_reader, posteriors, trending_rising, trending_top

NOW_MS = 1_700_000_000_000
NOW_S = NOW_MS / 1000.0
KEYS = Keys("sr")
FEATURES = FeatureSettings(embedding_dim=4)
LEARNING = LearningSettings()


def reader(store: Store) -> LiveReader:
    return live_reader(store, KEYS, FEATURES)


def clicks(counts: dict[str, int], ts_ms: int) -> list[Interaction]:
    return [
        Interaction(
            event_id=f"{item}-{n}-{ts_ms}", user_id=f"u{n}", item_id=item, type="click", ts=ts_ms
        )
        for item, count in counts.items()
        for n in range(count)
    ]


@pytest.fixture
def store() -> Store:
    items = [
        Item(item_id=f"i{n}", ts=NOW_MS - 7_200_000, category="news" if n % 2 else "sport")
        for n in range(12)
    ]
    old = clicks({f"i{n}": 2 for n in range(12)}, NOW_MS - 7_200_000)
    new = clicks({f"i{n}": 12 - n for n in range(12)}, NOW_MS - 60_000)
    built, _, _ = run_pipeline([*items, *old, *new], features=FEATURES, now_ms=NOW_MS)
    return built


def test_trending_and_rising_are_the_features_own_reads(store: Store) -> None:
    live = reader(store)
    trending = live.trending
    for half_life in FEATURES.half_lives_s:
        for scope in (GLOBAL, Keys.category_scope("news")):
            got = live.trending_list(half_life, scope, 5, NOW_S)
            assert got == trending_top(trending, store, half_life, 5, NOW_S, scope)
            assert len(got) == 5
    assert live.rising(GLOBAL, 4, NOW_S) == trending_rising(trending, store, 4, NOW_S)
    assert [i for i, _ in live.rising(GLOBAL, 2, NOW_S)] == ["i0", "i1"]  # most clicks lately
    assert sorted(live.categories(5)) == ["news", "sport"]


def test_item_popularity_is_one_read_of_its_counters(store: Store) -> None:
    live = reader(store)
    popularity = live.popularity("i0", NOW_S)
    short, long_ = live.counts(["i0"], NOW_S)["i0"]
    assert (popularity.short, popularity.long) == (short, long_)
    assert popularity.all_time == 14 * FEATURES.event_weights["click"]
    assert live.popularity("nobody", NOW_S).all_time == 0.0
    assert live.item_record("i0").meta is not None
    assert live.item_record("nobody").meta is None


def test_a_degraded_feed_gets_the_longest_list_not_the_dashboards_short_one(store: Store) -> None:
    live = reader(store)
    half_life = FEATURES.half_lives_s[0]
    live.trending_list(half_life, GLOBAL, 10, NOW_S)  # a feed's source
    live.trending_list(half_life, GLOBAL, 3, NOW_S)  # the dashboard's top, read afterwards
    assert len(live.last_good(8)) == 8
    assert len(live.last_good(2)) == 2
    assert len(live.last_good(50)) == 10  # the longest there is


def test_an_unreadable_heartbeat_is_skipped_not_raised(store: Store) -> None:
    batch = WriteBatch()
    good = orjson.dumps({"ts": NOW_S, "applied": 3}).decode()
    batch.hset(KEYS.workers(), {"w1": good, "w2": "{not json", "w3": "[1, 2]"})
    store.commit(batch)
    beats = reader(store).heartbeats()
    assert beats["w1"] == {"ts": NOW_S, "applied": 3}
    assert "w2" not in beats and "w3" not in beats
    assert "pipeline" in beats  # the worker that wrote the state


def test_bandit_reads_go_through_the_reader(store: Store) -> None:
    bandit = SourceBandit(
        KEYS,
        half_life_s=LEARNING.bandit_half_life_s,
        prior_alpha=LEARNING.bandit_prior_alpha,
        prior_beta=LEARNING.bandit_prior_beta,
    )
    batch = WriteBatch()
    outcomes = [Outcome("new|web", "trending", r, NOW_MS - 3_600_000) for r in (1.0, 0.0, 0.0)]
    bandit.add(batch, store.hgetall(KEYS.landmarks()), list, outcomes)
    store.commit(batch)
    live = reader(store)
    assert live.segments() == ["new|web"]
    posterior = live.posteriors("new|web", NOW_S)
    assert posterior == posteriors(bandit, store, "new|web", NOW_S)
    assert posterior["trending"].shown == pytest.approx(
        3 * 0.5 ** (3600 / LEARNING.bandit_half_life_s)
    )
