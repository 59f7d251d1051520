"""Reads of live state in tests, made the way the serving reader makes them: the store's
values first, then the feature's own pure function of them."""

from __future__ import annotations

from features.ann import AnnIndex
from features.bandit import Posterior, SourceBandit
from features.covisitation import Covisitation
from features.keys import GLOBAL, Keys
from features.landmarks import Ranked
from features.settings import FeatureSettings, LearningSettings
from features.store import Store
from features.trending import RISING_CANDIDATES, Trending
from serving.funnel.live import LiveReader


def live_reader(
    store: Store, keys: Keys, features: FeatureSettings, index: AnnIndex | None = None
) -> LiveReader:
    """The serving reader over ``store``, caching nothing (each read sees the latest
    writes), with ``index`` as its ANN replica."""
    return LiveReader(
        store,
        keys,
        features,
        LearningSettings(),
        index=lambda: index,
        catalog_view=lambda: None,
        lists_ttl_s=0.0,
        model_reload_s=0.0,
    )


def trending_top(
    trending: Trending, store: Store, half_life_s: float, k: int, now_s: float, scope: str = GLOBAL
) -> Ranked:
    """The ``k`` items with the highest decayed counts at ``now_s``."""
    stored = store.top(trending.keys.trending(half_life_s, scope), k)
    landmarks = store.hgetall(trending.keys.landmarks())
    return trending.decayed(stored, landmarks, half_life_s, now_s)


def trending_rising(
    trending: Trending, store: Store, k: int, now_s: float, scope: str = GLOBAL
) -> Ranked:
    """The ``k`` most accelerated items of ``scope`` at ``now_s``."""
    short_h, long_h = trending.half_lives_s[0], trending.half_lives_s[-1]
    short = trending_top(trending, store, short_h, RISING_CANDIDATES, now_s, scope)
    long_stored = store.zscores(trending.keys.trending(long_h, scope), [i for i, _ in short])
    landmarks = store.hgetall(trending.keys.landmarks())
    return trending.rising(short, long_stored, landmarks, now_s, k)


def neighbours(
    covisitation: Covisitation, store: Store, item_id: str, k: int, now_s: float
) -> Ranked:
    """One item's ``k`` strongest co-visited neighbours, decayed to ``now_s``."""
    (row,) = covisitation.neighbours_many(store, [item_id], k, now_s)
    return row


def posteriors(
    bandit: SourceBandit, store: Store, segment: str, now_s: float
) -> dict[str, Posterior]:
    """One segment's posteriors, decayed to ``now_s``."""
    key = bandit.keys.bandit(segment)
    stored = store.top(key, store.zcard(key))
    return bandit.posteriors(stored, store.hgetall(bandit.keys.landmarks()), now_s)
