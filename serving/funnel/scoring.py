"""Scoring: a feature row per candidate from live state, then one vectorised model call.

The worker's river ranker learns from the feature rows servers log with each impression,
so the names and meanings here are the contract between the two: change one, and the
model relearns that feature from zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from features.ranker import LinearScorer, RankerWeights, heuristic_scores
from serving.funnel.context import Candidate, FeedContext
from serving.funnel.live import LiveReader, age_hours
from serving.funnel.sources import CovisitationSource

#: Features that do not depend on which sources exist.
BASE_FEATURES = (
    "n_sources",
    "cos_session",
    "cos_user",
    "log_popularity",
    "trending_velocity",
    "covis_score",
    "log_age_hours",
    "category_affinity",
    "blend",
)


#: Rank offset of the reciprocal-rank features: a source's first candidate scores 1/RANK_OFFSET
#: and its tenth 1/(9 + RANK_OFFSET), so the head of each source leads without drowning the
#: rest (reciprocal rank fusion; Cormack, Clarke & Büttcher 2009 use a larger offset for
#: fusing many deep lists).
RANK_OFFSET = 2.0
#: Weight of the base heuristic (similarity, popularity, ...) beside the fused source ranks
#: in the cold blend: it breaks ties between candidates the sources rank alike.
BASE_WEIGHT = 0.05


def feature_names(sources: Sequence[str]) -> list[str]:
    """Column names: an indicator and a reciprocal rank per source, then the base features."""
    return [f"source:{s}" for s in sources] + [f"rank:{s}" for s in sources] + list(BASE_FEATURES)


def reciprocal_ranks(ranks: Sequence[int | None]) -> np.ndarray:
    """``RANK_OFFSET / (rank + RANK_OFFSET)`` per 0-based rank, 0 where a source did not
    propose the item (1 for a source's best candidate).

    Examples:
        >>> reciprocal_ranks([0, 2, None]).tolist()
        [1.0, 0.5, 0.0]
    """
    return np.array(
        [0.0 if r is None else RANK_OFFSET / (r + RANK_OFFSET) for r in ranks], np.float32
    )


def cold_blend(
    rank_features: np.ndarray, source_weights: Sequence[float], base: np.ndarray
) -> np.ndarray:
    """The cold ranking: each source's reciprocal ranks weighted by that source's posterior
    click-rate (so the mix follows what users clicked), summed, plus a small share of the
    base heuristic.

    Examples:
        >>> ranks = np.array([[1.0, 0.0], [0.5, 1.0]])  # two candidates, two sources
        >>> cold_blend(ranks, [0.1, 0.04], np.zeros(2)).round(3).tolist()
        [1.0, 0.9]
    """
    weights = np.asarray(source_weights, np.float64)
    top = weights.max() if weights.size else 0.0
    scaled = weights / top if top > 0 else np.ones_like(weights)
    return np.asarray(rank_features @ scaled + BASE_WEIGHT * base, np.float64)


class Scorer:
    """Builds the feature matrix and scores it with the ranker, or the heuristic when cold."""

    def __init__(self, live: LiveReader, sources: Sequence[str], min_examples: int) -> None:
        self.live = live
        self.sources = list(sources)
        self.columns = feature_names(self.sources)
        self.min_examples = min_examples
        # Replaced whole (one assignment), so concurrent requests never see half of it.
        self._cached: tuple[RankerWeights, LinearScorer] | None = None

    def features(self, ctx: FeedContext, candidates: list[Candidate]) -> np.ndarray:
        """The (candidates × columns) float32 matrix."""
        n = len(candidates)
        x = np.zeros((n, len(self.columns)), np.float32)
        if not n:
            return x
        ids = [c.item_id for c in candidates]
        width = len(self.sources)
        for j, source in enumerate(self.sources):
            x[:, j] = [source in c.sources for c in candidates]
            x[:, width + j] = reciprocal_ranks([c.ranks.get(source) for c in candidates])
        base = 2 * width
        col = {name: base + i for i, name in enumerate(BASE_FEATURES)}
        x[:, col["n_sources"]] = [len(c.sources) for c in candidates]
        index = self.live.index
        if index is not None:
            # Fetched once here; ordering's MMR reuses them.
            vectors = index.vectors(ids)
            live = np.flatnonzero(np.any(vectors, axis=1))
            for row in live.tolist():
                candidates[row].vector = vectors[row]
            if ctx.user.session is not None:
                x[:, col["cos_session"]] = vectors @ ctx.user.session
            if ctx.user.long_term is not None:
                x[:, col["cos_user"]] = vectors @ ctx.user.long_term
        missing = [i for i in ids if i not in ctx.counts]
        if missing:
            ctx.counts.update(self.live.counts(missing, ctx.request.now_s))
        pairs = np.array([ctx.counts[i] for i in ids], np.float64).reshape(n, 2)
        short, long_ = pairs[:, 0], pairs[:, 1]
        x[:, col["log_popularity"]] = np.log1p(long_)
        # Steady interest gives short/h_short == long/h_long; the log ratio is 0 then.
        h_short, h_long = self.live.short_half_life, self.live.long_half_life
        ratio = (short / h_short + 1e-9) / (long_ / h_long + 1e-9)
        x[:, col["trending_velocity"]] = np.where(long_ > 0, np.log(ratio), 0.0)
        x[:, col["covis_score"]] = [
            np.log1p(c.sources.get(CovisitationSource.name, 0.0)) for c in candidates
        ]
        now = ctx.request.now_s
        x[:, col["log_age_hours"]] = [np.log1p(age_hours(c.meta, now)) for c in candidates]
        shares = ctx.interest_shares
        x[:, col["category_affinity"]] = [
            shares.get(c.meta.category, 0.0) if c.meta is not None and c.meta.category else 0.0
            for c in candidates
        ]
        width = len(self.sources)
        weights = [ctx.source_weights.get(s, 0.0) for s in self.sources]
        # The cold ranking is itself a feature: the learned ranker starts from it
        # (features.ranker.PRIOR_WEIGHTS) and learns corrections on top.
        x[:, col["blend"]] = cold_blend(
            x[:, width : 2 * width], weights, heuristic_scores(self.columns, x)
        )
        return x

    def score(self, ctx: FeedContext, candidates: list[Candidate]) -> str:
        """Set each candidate's ``features`` and ``score``; return which model scored them
        (for the impression's policy version)."""
        x = self.features(ctx, candidates)
        weights = self.live.ranker()
        if weights.examples >= self.min_examples and weights.examples > 0:
            scores = self._linear(weights).score(x)
            version = f"ranker@{weights.examples}"
            ctx.trace.scorer = {"model": "ranker", "examples": weights.examples}
        else:
            scores = x[:, self.columns.index("blend")].astype(np.float64)
            version = "heuristic"
            ctx.trace.scorer = {"model": "heuristic", "examples": weights.examples}
        for n, candidate in enumerate(candidates):
            candidate.features = x[n]
            candidate.score = float(scores[n])
        return version

    def _linear(self, weights: RankerWeights) -> LinearScorer:
        """A scorer for ``weights``, rebuilt only when they were reloaded."""
        cached = self._cached
        if cached is None or cached[0] is not weights:
            cached = self._cached = (weights, LinearScorer(weights, self.columns))
        return cached[1]
