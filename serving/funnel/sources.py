"""Retrieval: named candidate sources in a registry.

Adding a source means writing a class with ``name`` and ``_candidates`` and adding its name
to ``funnel.sources`` in config. Each returns (item, score) pairs, best first; scores are
only compared within a source.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from typing import ClassVar

from features.keys import Keys
from features.landmarks import Ranked
from serving.funnel.context import FeedContext
from serving.funnel.live import LiveReader
from serving.funnel.settings import FunnelSettings

#: Registry: source name → class.
SOURCES: dict[str, type[CandidateSource]] = {}


class CandidateSource(ABC):
    """One way of proposing items for a feed."""

    name: ClassVar[str]
    #: Served from this process's memory (the ANN replica, lists cached for a second): run
    #: in the request's thread, where a thread hop would cost more than the source itself.
    #: The others (the default, so that a new source's time budget holds) wait on the store
    #: and run on the source pool, within their budget.
    local: ClassVar[bool] = False

    def __init__(self, live: LiveReader, settings: FunnelSettings) -> None:
        self.live = live
        self.settings = settings

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        SOURCES[cls.name] = cls

    def candidates(self, ctx: FeedContext, k: int) -> Ranked:
        """Up to ``k`` (item, score) pairs, best first."""
        return self._candidates(ctx, k)[:k] if k > 0 else []

    @abstractmethod
    def _candidates(self, ctx: FeedContext, k: int) -> Ranked: ...

    def _recent(self, ctx: FeedContext) -> set[str]:
        """The user's latest items, which personal sources leave out unless repeats are on."""
        return {i for i, _ in ctx.user.recent} if self.settings.exclude_seen else set()


class SessionAnnSource(CandidateSource):
    """Nearest items to the current session's embedding (HNSW)."""

    name = "session_ann"
    local = True

    def _candidates(self, ctx: FeedContext, k: int) -> Ranked:
        index = self.live.index
        if index is None or ctx.user.session is None:
            return []
        return index.query(ctx.user.session, k, exclude=self._recent(ctx))


class UserAnnSource(CandidateSource):
    """Nearest items to the user's long-term embedding (HNSW)."""

    name = "user_ann"
    local = True

    def _candidates(self, ctx: FeedContext, k: int) -> Ranked:
        index = self.live.index
        if index is None or ctx.user.long_term is None:
            return []
        return index.query(ctx.user.long_term, k, exclude=self._recent(ctx))


class CovisitationSource(CandidateSource):
    """What users went on to after the user's recent items, newer items weighing more."""

    name = "covisitation"

    def _candidates(self, ctx: FeedContext, k: int) -> Ranked:
        # What followed a skipped or dismissed item is no lead.
        recent = [item for item, _ in ctx.user.recent if item not in ctx.user.negative]
        if not recent:
            return []
        # Enough per recent item to fill k after overlaps, not k each.
        per_item = max(10, 2 * k // len(recent))
        rows = self.live.covisited(recent, per_item, ctx.request.now_s)
        return _blend(rows, [1.0 / (1 + n) for n in range(len(rows))], exclude=self._recent(ctx))


class TrendingSource(CandidateSource):
    """Trending now: globally (shortest half-life) and in the user's or request's categories."""

    name = "trending"
    local = True

    def _candidates(self, ctx: FeedContext, k: int) -> Ranked:
        now, half_life = ctx.request.now_s, self.live.short_half_life
        if ctx.request.categories:
            scopes = sorted(ctx.request.categories)
        else:
            scopes = ctx.interests[: self.settings.interest_categories]
        lists = [self.live.trending_list(half_life, Keys.category_scope(c), k, now) for c in scopes]
        weights = [ctx.interest_shares.get(c, 1.0) for c in scopes]
        if not ctx.request.categories:
            lists.append(self.live.trending_list(half_life, "global", k, now))
            weights.append(1.0)
        return _blend(lists, weights, normalise=True)


class PopularSource(CandidateSource):
    """Most interacted with of all time: the safe fallback for anyone."""

    name = "popular"
    local = True

    def _candidates(self, ctx: FeedContext, k: int) -> Ranked:
        return self.live.popular_list(k)


class FreshSource(CandidateSource):
    """The newest available items: item cold start."""

    name = "fresh"
    local = True

    def _candidates(self, ctx: FeedContext, k: int) -> Ranked:
        # Newest first; the score is the creation time, used only for this source's order.
        return self.live.fresh_list(k)


class SimilarItemSource(CandidateSource):
    """Items like the request's seed item: its embedding neighbours and co-visitation."""

    name = "similar_item"

    def _candidates(self, ctx: FeedContext, k: int) -> Ranked:
        seed = ctx.request.item_id
        if seed is None:
            return []
        lists: list[Ranked] = []
        index = self.live.index
        if index is not None:
            vector = index.vectors([seed])[0]
            if vector.any():
                lists.append(index.query(vector, k, exclude={seed}))
        lists.append(self.live.covisited([seed], k, ctx.request.now_s)[0])
        return _blend(lists, [1.0] * len(lists), exclude={seed}, normalise=True)


def _blend(
    lists: list[Ranked],
    weights: list[float],
    *,
    exclude: set[str] | None = None,
    normalise: bool = False,
) -> Ranked:
    """Merge ranked lists by a weighted sum of scores (each list scaled to its best score
    first when ``normalise``); ties by item id."""
    total: dict[str, float] = defaultdict(float)
    for ranked, weight in zip(lists, weights, strict=True):
        top = ranked[0][1] if normalise and ranked and ranked[0][1] > 0 else 1.0
        for item, score in ranked:
            if exclude is None or item not in exclude:
                total[item] += weight * score / top
    return sorted(total.items(), key=lambda pair: (-pair[1], pair[0]))
