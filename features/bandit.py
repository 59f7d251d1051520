"""The ordering stage's bandit: discounted Thompson sampling over candidate sources, per
context segment (such as ``"new|mobile"``).

Each source's click-rate has a Beta posterior built from forward-decayed impression and
reward counts, discounted by event time exactly as trending is (see :mod:`features.decay`),
so the posterior follows drift. The stored numbers are plain ``ZINCRBY`` increments against a
shared landmark; increments commute, so several workers update one segment without a
read-modify-write, and only a landmark change (guarded) makes a commit conflict.

Propensities: the policy actually run is "draw a source from the Monte-Carlo estimate of
Thompson sampling's pick distribution" (:func:`source_probabilities`, then
:func:`choose_source`), not "take one Thompson draw". So the logged probability of the chosen
source is exact for the executed policy, not an estimate of it; the estimate only defines
the policy. Impressions record the method as ``"monte-carlo:<draws>"``
(:func:`propensity_method`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from features.batch import WriteBatch
from features.decay import decay_rate, forward_weight
from features.keys import Keys
from features.landmarks import Ranked, batch_landmark, landmark_factor
from features.store import Store

#: Field of the landmarks hash shared by every segment's counters.
FAMILY = "bandit"

_SHOWN = "n"
_REWARDS = "r"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One served slot: which source filled it and whether it was clicked (reward 0..1)."""

    segment: str
    source: str
    reward: float
    ts_ms: int


@dataclass(frozen=True, slots=True)
class Posterior:
    """A source's Beta posterior and the decayed counts behind it."""

    alpha: float
    beta: float
    shown: float
    rewards: float

    @property
    def mean(self) -> float:
        """Posterior mean click-rate."""
        return self.alpha / (self.alpha + self.beta)


def propensity_method(draws: int) -> str:
    """How logged propensities were computed, for the impression record."""
    return f"monte-carlo:{draws}"


class SourceBandit:
    """Decayed Beta posteriors of each source's click-rate, per segment.

    Examples:
        >>> from features.stores.memory_store import InMemoryStore
        >>> bandit = SourceBandit(Keys("b"), half_life_s=3600.0, prior_alpha=1.0, prior_beta=1.0)
        >>> store, batch = InMemoryStore(), WriteBatch()
        >>> clicks = [1.0, 1.0, 0.0]  # trending: 2 clicks in 3 slots; fresh: 0 in 2
        >>> bandit.add(batch, {}, list, [
        ...     *(Outcome("new|mobile", "trending", r, 7_200_000) for r in clicks),
        ...     *(Outcome("new|mobile", "fresh", 0.0, 7_200_000) for _ in range(2)),
        ... ])
        >>> store.commit(batch)
        >>> stored = store.top(Keys("b").bandit("new|mobile"), 100)
        >>> landmarks = store.hgetall(Keys("b").landmarks())
        >>> posts = bandit.posteriors(stored, landmarks, now_s=7_200.0)
        >>> posts["trending"]
        Posterior(alpha=3.0, beta=2.0, shown=3.0, rewards=2.0)
        >>> rng = np.random.default_rng(7)
        >>> probs = source_probabilities(
        ...     posts, ["trending", "fresh", "covis"], rng, draws=2000, floor=0.05,
        ...     prior=bandit.prior)  # covis has no data yet: it draws from the prior
        >>> {s: round(p, 2) for s, p in probs.items()}
        {'trending': 0.56, 'fresh': 0.07, 'covis': 0.37}
        >>> source, propensity = choose_source(probs, rng)
        >>> source, round(propensity, 4), propensity_method(2000)
        ('covis', 0.3677, 'monte-carlo:2000')
    """

    def __init__(
        self, keys: Keys, *, half_life_s: float, prior_alpha: float, prior_beta: float
    ) -> None:
        if prior_alpha <= 0 or prior_beta <= 0:
            raise ValueError("Beta prior parameters must be positive")
        self.keys = keys
        self.half_life_s = half_life_s
        self.rate = decay_rate(half_life_s)
        self.prior = Posterior(prior_alpha, prior_beta, 0.0, 0.0)

    def add(
        self,
        batch: WriteBatch,
        landmarks: Mapping[str, str],
        known_segments: Callable[[], Sequence[str]],
        outcomes: Iterable[Outcome],
    ) -> None:
        """Queue the decayed impression and reward increments of ``outcomes``.

        ``landmarks`` is the landmarks hash as read before the batch; ``known_segments``
        gives the segments already stored, asked only when a rotation must rescale them.
        """
        rows = list(outcomes)
        for o in rows:
            # "|" separates a member's source from its counter; allowing it would alias.
            if "|" in o.source:
                raise ValueError(f"bandit source {o.source!r} must not contain '|'")
            if not 0.0 <= o.reward <= 1.0:
                raise ValueError(f"bandit reward {o.reward!r} is outside 0..1")
        if not rows:
            return
        times = [o.ts_ms / 1000.0 for o in rows]
        batch_segments = {o.segment for o in rows}

        def segments() -> list[str]:
            return sorted(set(known_segments()) | batch_segments)

        def rescale(factor: float) -> None:
            for segment in segments():
                batch.zscale(self.keys.bandit(segment), factor)

        span = (min(times), max(times))
        landmark = batch_landmark(batch, self.keys, landmarks, FAMILY, self.rate, span, rescale)
        amounts: dict[str, dict[str, float]] = {}
        last_seen: dict[str, float] = {}
        for o, t in zip(rows, times, strict=True):
            weight = forward_weight(1.0, t, landmark, self.rate)
            seg = amounts.setdefault(o.segment, {})
            shown, rewarded = f"{o.source}|{_SHOWN}", f"{o.source}|{_REWARDS}"
            seg[shown] = seg.get(shown, 0.0) + weight
            seg[rewarded] = seg.get(rewarded, 0.0) + o.reward * weight
            last_seen[o.segment] = max(float(o.ts_ms), last_seen.get(o.segment, 0.0))
        for segment, members in amounts.items():
            batch.zincrby_many(self.keys.bandit(segment), members)
        batch.zadd(self.keys.bandit_segments(), last_seen, greater=True)

    def posteriors(
        self, stored: Ranked, landmarks: Mapping[str, str], now_s: float
    ) -> dict[str, Posterior]:
        """Every source of one segment, with its posterior decayed to ``now_s``, given the
        segment's stored counts (its whole sorted set) and the landmarks hash as read."""
        factor = landmark_factor(landmarks, FAMILY, self.rate, now_s)
        if factor is None:
            return {}
        counts: dict[str, list[float]] = {}
        for member, raw in stored:
            source, _, counter = member.rpartition("|")
            pair = counts.setdefault(source, [0.0, 0.0])
            if counter == _SHOWN:
                pair[0] = raw * factor
            elif counter == _REWARDS:
                pair[1] = raw * factor
        return {
            source: Posterior(
                self.prior.alpha + rewards,
                self.prior.beta + max(shown - rewards, 0.0),
                shown,
                rewards,
            )
            for source, (shown, rewards) in counts.items()
        }

    def segments(self, store: Store) -> list[str]:
        """Every segment with stored counts, most recently updated first."""
        key = self.keys.bandit_segments()
        return [segment for segment, _ in store.top(key, store.zcard(key))]


def blend_weights(
    posteriors: Mapping[str, Posterior], sources: Sequence[str], strength: float
) -> dict[str, float]:
    """Each source's click-rate for the blend, shrunk toward the segment's pooled rate
    (empirical Bayes): ``(rewards + strength·p̄) / (shown + strength)``, where ``p̄`` is every
    source's rewards over every source's impressions in the segment.

    Thompson sampling wants an optimistic prior, so that an untried source gets tried; the
    blend ranks every slot by these weights and wants the opposite: a source with little
    evidence weighs what an average source does, not the prior's guess (Beta(1, 20) says 5%,
    several times a feed's real per-slot rate, which let rarely shown sources outrank the ones
    users click). With no evidence at all, every source weighs the same.

    Examples:
        >>> p = {"a": Posterior(0, 0, shown=1000.0, rewards=40.0),
        ...      "b": Posterior(0, 0, shown=1000.0, rewards=10.0)}
        >>> {k: round(v, 4) for k, v in blend_weights(p, ["a", "b", "new"], 20.0).items()}
        {'a': 0.0397, 'b': 0.0103, 'new': 0.025}
        >>> blend_weights({}, ["a", "b"], 20.0)
        {'a': 1.0, 'b': 1.0}
    """
    if strength <= 0:
        raise ValueError("strength must be > 0")
    known = [posteriors[s] for s in sources if s in posteriors]
    shown = math.fsum(p.shown for p in known)
    if shown <= 0:
        return {s: 1.0 for s in sources}
    pooled = math.fsum(p.rewards for p in known) / shown
    out: dict[str, float] = {}
    for source in sources:
        post = posteriors.get(source)
        rewards, seen = (post.rewards, post.shown) if post is not None else (0.0, 0.0)
        out[source] = (rewards + strength * pooled) / (seen + strength)
    return out


def source_probabilities(
    posteriors: Mapping[str, Posterior],
    sources: Sequence[str],
    rng: np.random.Generator,
    *,
    draws: int,
    floor: float,
    prior: Posterior,
) -> dict[str, float]:
    """Probability that the policy picks each of ``sources`` for one slot, in their order.

    Thompson's pick distribution is estimated from ``draws`` Beta samples per source (ties go
    to the earlier source), then mixed with a uniform share ``floor`` so that every
    propensity stays above zero for off-policy evaluation.
    """
    if draws < 1:
        raise ValueError("draws must be at least 1")
    if not 0.0 <= floor <= 1.0:
        raise ValueError("floor must be within 0..1")
    if len(set(sources)) != len(sources):
        raise ValueError("sources must be distinct")
    if not sources:
        return {}
    chosen = [posteriors.get(s, prior) for s in sources]
    alpha = np.array([p.alpha for p in chosen], dtype=np.float64)
    beta = np.array([p.beta for p in chosen], dtype=np.float64)
    samples = rng.beta(alpha, beta, size=(draws, len(sources)))
    wins = np.bincount(np.argmax(samples, axis=1), minlength=len(sources)) / draws
    mixed = (1.0 - floor) * wins + floor / len(sources)
    return {s: float(p) for s, p in zip(sources, mixed, strict=True)}


def choose_source(
    probabilities: Mapping[str, float], rng: np.random.Generator
) -> tuple[str, float]:
    """Draw a source from ``probabilities``; return it with its probability (the propensity)."""
    if not probabilities:
        raise ValueError("no source to choose from")
    # One uniform and a walk over a handful of sources: rng.choice(p=...) costs ~10× more.
    target = rng.random() * math.fsum(probabilities.values())
    running = 0.0
    for name, probability in probabilities.items():
        running += probability
        if target < running:
            return name, probability
    return name, probability  # target landed on the rounding edge: the last source
