"""Ordering: the slate, slot by slot, from one blended score.

Each slot is, in order of precedence: a pinned item; an exploration slot (the freshest new
item not yet placed); or the policy's pick. The policy is a mixture with exact per-slot
propensities over sources: with probability ``1 − explore_share`` it takes the blended
ranking's best remaining candidate by MMR (score, boosted for freshness, against similarity
to what is already placed) and credits that candidate's primary source (the one whose
weighted reciprocal rank contributed most to its blend); with ``explore_share`` it runs
Thompson sampling over the sources that still have candidates and takes the drawn source's
best remaining candidate. So a slot's source distribution is
``(1 − ε)·[s = primary] + ε·thompson(s)``, logged whole with every slot:
the list is never worse than the blend's, and the bandit's posteriors, which also weigh the
sources in the cold blend, follow the clicks. Every choice respects the per-creator and
per-category caps.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from features.bandit import Posterior, choose_source, source_probabilities
from serving.funnel.context import Candidate, FeedContext
from serving.funnel.live import age_hours
from serving.funnel.scoring import RANK_OFFSET
from serving.funnel.settings import FunnelSettings

PINNED, EXPLORE = "pinned", "explore"


@dataclass(frozen=True, slots=True)
class Slot:
    """One position of the served feed."""

    candidate: Candidate
    source: str
    propensity: float
    # The whole distribution the source was drawn from (bandit slots only): what off-policy
    # evaluation needs to ask how another policy would have chosen.
    probabilities: Mapping[str, float] | None = None


def primary_source(
    candidate: Candidate, live: list[str], weights: Mapping[str, float] | None = None
) -> str:
    """The source among ``live`` that contributed most to ``candidate``'s blend: its weight
    (the bandit's posterior click-rate) over its rank, so credit follows what the blend
    weighed rather than whichever source also happened to list the item first; equal weights
    make it the source that ranked it highest (ties by name).

    Examples:
        >>> c = Candidate("i", {"a": 0.2, "b": 0.9, "c": 1.0}, ranks={"a": 3, "b": 1, "c": 1})
        >>> primary_source(c, ["a", "b", "c"]), primary_source(c, ["a"])
        ('b', 'a')
        >>> primary_source(c, ["a", "b", "c"], {"a": 0.4, "b": 0.05, "c": 0.05})
        'a'
    """
    found = [s for s in live if s in candidate.sources] or live
    weights = weights or {}
    missing = len(candidate.ranks)

    def contribution(source: str) -> tuple[float, str]:
        rank = candidate.ranks.get(source, missing)
        return (-weights.get(source, 1.0) / (rank + RANK_OFFSET), source)

    return min(found, key=contribution)


@dataclass
class _Placement:
    """What the slate holds so far: items placed, per-creator and per-category counts for
    the caps, candidates skipped by a cap, vectors of the items placed (for MMR)."""

    placed: set[str] = field(default_factory=set)
    creators: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)
    capped: set[str] = field(default_factory=set)
    chosen: list[np.ndarray] = field(default_factory=list)

    def add(self, slot: Slot, vectors: Mapping[str, np.ndarray]) -> None:
        """Count ``slot`` in."""
        self.placed.add(slot.candidate.item_id)
        meta = slot.candidate.meta
        if meta is not None and meta.creator:
            self.creators[meta.creator] += 1
        if meta is not None and meta.category:
            self.categories[meta.category] += 1
        vector = vectors.get(slot.candidate.item_id)
        if vector is not None:
            self.chosen.append(vector)


@dataclass
class _Draw:
    """What slots are drawn from: the blended list and each source's list (best first), the
    index of each list's first candidate that may still be placed (a placed or capped one
    never becomes placeable again, so heads only move forward), and the slot probabilities
    already estimated per set of live sources (the posteriors are fixed for the request)."""

    ordered: list[Candidate]
    by_source: dict[str, list[Candidate]]
    heads: dict[str, int]
    value: dict[str, float]
    vectors: dict[str, np.ndarray]
    head: int = 0
    estimates: dict[tuple[str, ...], dict[str, float]] = field(default_factory=dict)


class SlateBuilder:
    """Fills a feed of ``k`` slots from scored candidates."""

    def __init__(self, settings: FunnelSettings, *, draws: int, floor: float) -> None:
        self.settings = settings
        self.draws, self.floor = draws, floor
        self.pinned = {p.position: p.item_id for p in settings.pinned}

    def build(
        self,
        ctx: FeedContext,
        candidates: list[Candidate],
        k: int,
        posteriors: Mapping[str, Posterior],
        prior: Posterior,
        pinned: Mapping[str, Candidate] | None = None,
        placed: Sequence[Slot] = (),
    ) -> list[Slot]:
        """The slate; ``pinned`` holds the pinned items that passed the filters. With
        ``placed`` (a slate the candidates ran out for), the slate goes on after its slots,
        within the same caps."""
        pinned = pinned or {}
        at = _Placement()
        for kept in placed:
            c = kept.candidate
            at.add(kept, {c.item_id: c.vector} if c.vector is not None else {})
        # A pinned item shows at its position only, never earlier through a source.
        taken = at.placed | set(pinned)
        candidates = [c for c in candidates if c.item_id not in taken]
        value = {c.item_id: self._value(c, ctx.request.now_s) for c in candidates}
        ordered = sorted(candidates, key=lambda c: (-value[c.item_id], c.item_id))
        by_source: dict[str, list[Candidate]] = {}
        for c in ordered:
            for source in c.sources:
                by_source.setdefault(source, []).append(c)
        vectors = {c.item_id: c.vector for c in candidates if c.vector is not None}
        draw = _Draw(ordered, by_source, dict.fromkeys(by_source, 0), value, vectors)
        young = self._young(ctx, candidates)
        slots: list[Slot] = list(placed)
        explore = self.settings.explore_share if self.settings.learn_mix else 0.0
        while len(slots) < k:
            slot = self._fixed(len(slots), young, at, pinned)
            if slot is None:
                live = self._live_sources(draw, at)
                if not live:
                    # Out of candidates: pinned items still due are shown, in position order.
                    due = [
                        pinned[i]
                        for _, i in sorted(self.pinned.items())
                        if i in pinned and i not in at.placed
                    ]
                    if not due:
                        break
                    slots.append(Slot(due[0], PINNED, 1.0))
                    at.placed.add(due[0].item_id)
                    continue
                slot = self._drawn(ctx, draw, at, live, posteriors, prior, explore)
            slots.append(slot)
            at.add(slot, vectors)
        ctx.trace.ordering.update(
            {"segment": ctx.segment, "slots": len(slots), "skipped_by_caps": len(at.capped)}
        )
        return slots

    def _live_sources(self, draw: _Draw, at: _Placement) -> list[str]:
        """The sources that can fill the next slot within the caps. Caps and placements only
        tighten, so a source that cannot never will again: it leaves the draw."""
        live: list[str] = []
        for source in list(draw.by_source):
            listed = draw.by_source[source]
            head = self._advance(listed, draw.heads[source], at)
            if head < len(listed):
                draw.heads[source] = head
                live.append(source)
            else:
                del draw.by_source[source]
        return live

    def _drawn(
        self,
        ctx: FeedContext,
        draw: _Draw,
        at: _Placement,
        live: list[str],
        posteriors: Mapping[str, Posterior],
        prior: Posterior,
        explore: float,
    ) -> Slot:
        """The next slot by the bandit: the blend's best, or a source drawn by exploration
        and that source's best."""
        draw.head = self._advance(draw.ordered, draw.head, at)
        best = self._mmr(
            self._pool(draw.ordered[draw.head :], at), draw.value, draw.vectors, at.chosen
        )
        primary = primary_source(best, live, ctx.source_weights)
        probs = self._mixture(ctx, posteriors, prior, live, primary, explore, draw.estimates)
        source, propensity = choose_source(probs, ctx.rng)
        if "first_slot_probabilities" not in ctx.trace.ordering:
            ctx.trace.ordering["first_slot_probabilities"] = probs
        if source != primary:
            pool = self._pool(draw.by_source[source][draw.heads[source] :], at)
            best = self._mmr(pool, draw.value, draw.vectors, at.chosen)
        return Slot(best, source, propensity, probs)

    def _mixture(
        self,
        ctx: FeedContext,
        posteriors: Mapping[str, Posterior],
        prior: Posterior,
        live: list[str],
        primary: str,
        explore: float,
        estimates: dict[tuple[str, ...], dict[str, float]],
    ) -> dict[str, float]:
        """The slot's source distribution: the blend's pick credited to ``primary`` with
        ``1 − explore``, Thompson sampling over ``live`` with ``explore``."""
        names = tuple(sorted(live))
        thompson = estimates.get(names)
        if thompson is None:
            thompson = estimates[names] = (
                source_probabilities(
                    posteriors, names, ctx.rng, draws=self.draws, floor=self.floor, prior=prior
                )
                if explore > 0
                else dict.fromkeys(names, 0.0)
            )
        probs = {s: explore * p for s, p in thompson.items()}
        probs[primary] += 1.0 - explore
        return probs

    def _fixed(
        self, position: int, young: list[Candidate], at: _Placement, pinned: Mapping[str, Candidate]
    ) -> Slot | None:
        item = self.pinned.get(position)
        if item is not None and item in pinned and item not in at.placed:
            return Slot(pinned[item], PINNED, 1.0)
        if position in self.settings.exploration_slots:
            newest = self._pool(young, at, size=1, capped=set())
            if newest:
                return Slot(newest[0], EXPLORE, 1.0)
        return None

    def _young(self, ctx: FeedContext, candidates: list[Candidate]) -> list[Candidate]:
        """Candidates young enough to explore, newest first (ties by id)."""
        if not self.settings.exploration_slots:
            return []
        limit_h = self.settings.exploration_max_age_s / 3600.0
        now = ctx.request.now_s
        young = [
            c
            for c in candidates
            if c.meta is not None and c.meta.created_at_ms > 0 and age_hours(c.meta, now) <= limit_h
        ]
        return sorted(young, key=lambda c: (-(c.meta.created_at_ms if c.meta else 0), c.item_id))

    def _value(self, c: Candidate, now_s: float) -> float:
        """The score raised by the freshness boost: ``score + b·2^(−age/h)·|score|`` (a
        relative boost that also raises negative scores)."""
        boost = self.settings.freshness_boost
        if boost and c.meta is not None and c.meta.created_at_ms > 0:
            halvings = age_hours(c.meta, now_s) * 3600.0 / self.settings.freshness_half_life_s
            return c.score + boost * math.pow(2.0, -halvings) * abs(c.score)
        return c.score

    def _advance(self, candidates: list[Candidate], head: int, at: _Placement) -> int:
        """The index of the first candidate from ``head`` on that may be placed now."""
        while head < len(candidates):
            c = candidates[head]
            if c.item_id in at.placed:
                head += 1
            elif self._over_cap(c, at):
                at.capped.add(c.item_id)
                head += 1
            else:
                break
        return head

    def _over_cap(self, c: Candidate, at: _Placement) -> bool:
        meta = c.meta
        if meta is None:
            return False
        if meta.creator and at.creators[meta.creator] >= self.settings.max_per_creator:
            return True
        cap = self.settings.max_per_category
        return cap is not None and bool(meta.category) and at.categories[meta.category or ""] >= cap

    def _pool(
        self,
        candidates: list[Candidate],
        at: _Placement,
        size: int | None = None,
        capped: set[str] | None = None,
    ) -> list[Candidate]:
        """The best few (``size``, default ``mmr_pool``) open candidates within the caps;
        those over a cap are noted in ``capped`` (default: the placement's)."""
        size = size or self.settings.mmr_pool
        capped = at.capped if capped is None else capped
        pool: list[Candidate] = []
        for c in candidates:
            if c.item_id in at.placed:
                continue
            if self._over_cap(c, at):
                capped.add(c.item_id)
                continue
            pool.append(c)
            if len(pool) >= size:
                break
        return pool

    def _mmr(
        self,
        pool: list[Candidate],
        value: dict[str, float],
        vectors: dict[str, np.ndarray],
        chosen: list[np.ndarray],
    ) -> Candidate:
        """The pool's best by MMR: value against similarity to what is already placed."""
        lam = self.settings.mmr_lambda
        if lam >= 1.0 or not chosen or len(pool) == 1:
            return pool[0]
        similarity = np.zeros(len(pool))
        rows = [n for n, c in enumerate(pool) if c.item_id in vectors]
        if rows:
            pooled = np.stack([vectors[pool[n].item_id] for n in rows])
            similarity[rows] = (pooled @ np.stack(chosen).T).max(axis=1)
        values = np.array([value[c.item_id] for c in pool])
        # argmax takes the first of equals: the source's own order breaks ties.
        return pool[int(np.argmax(lam * values - (1.0 - lam) * similarity))]
