"""Ordering: the slate, slot by slot.

Each slot is, in order of precedence: a pinned item; an exploration slot (the freshest new
item not yet placed); or the bandit's pick: Thompson sampling over the sources that still
have candidates, then that source's best remaining candidate by MMR (score, boosted for
freshness, against similarity to what is already placed), within the per-creator and
per-category caps. Every slot logs the probability with which its source was chosen.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from features.ann import AnnIndex
from features.bandit import Posterior, choose_source, source_probabilities
from serving.funnel.context import Candidate, FeedContext
from serving.funnel.live import age_hours
from serving.funnel.settings import FunnelSettings

PINNED, EXPLORE = "pinned", "explore"


@dataclass(frozen=True, slots=True)
class Slot:
    """One position of the served feed."""

    candidate: Candidate
    source: str
    propensity: float


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
        index: AnnIndex | None,
        pinned: Mapping[str, Candidate] | None = None,
    ) -> list[Slot]:
        """The slate; ``pinned`` holds the pinned items that passed the filters."""
        value = {c.item_id: self._value(c, ctx.request.now_s) for c in candidates}
        by_source: dict[str, list[Candidate]] = {}
        for c in sorted(candidates, key=lambda c: (-value[c.item_id], c.item_id)):
            for source in c.sources:
                by_source.setdefault(source, []).append(c)
        vectors = self._vectors(index, candidates)
        placed: set[str] = set()
        creators: Counter[str] = Counter()
        categories: Counter[str] = Counter()
        chosen_vectors: list[np.ndarray] = []
        slots: list[Slot] = []
        # The posteriors are fixed for the request, so a slot's probabilities depend only on
        # which sources still have candidates: estimate them once per such set.
        estimates: dict[tuple[str, ...], dict[str, float]] = {}
        capped = 0
        for position in range(k):
            slot = self._fixed(ctx, position, candidates, placed, pinned or {})
            if slot is None:
                live = {s: cs for s, cs in by_source.items() if self._first_open(cs, placed)}
                if not live:
                    break
                names = tuple(sorted(live))
                probs = estimates.get(names)
                if probs is None:
                    probs = estimates[names] = source_probabilities(
                        posteriors, names, ctx.rng, draws=self.draws, floor=self.floor, prior=prior
                    )
                source, propensity = choose_source(probs, ctx.rng)
                if "first_slot_probabilities" not in ctx.trace.ordering:
                    ctx.trace.ordering["first_slot_probabilities"] = probs
                pick, skipped = self._pick(
                    live[source], placed, creators, categories, value, vectors, chosen_vectors
                )
                capped += skipped
                if pick is None:
                    # Only capped items are left in this source: drop it from the mix.
                    by_source.pop(source)
                    continue
                slot = Slot(pick, source, propensity)
            slots.append(slot)
            placed.add(slot.candidate.item_id)
            meta = slot.candidate.meta
            if meta is not None and meta.creator:
                creators[meta.creator] += 1
            if meta is not None and meta.category:
                categories[meta.category] += 1
            vector = vectors.get(slot.candidate.item_id)
            if vector is not None:
                chosen_vectors.append(vector)
        ctx.trace.ordering.update(
            {"segment": ctx.segment, "slots": len(slots), "skipped_by_caps": capped}
        )
        return slots

    def _fixed(
        self,
        ctx: FeedContext,
        position: int,
        candidates: list[Candidate],
        placed: set[str],
        pinned: Mapping[str, Candidate],
    ) -> Slot | None:
        item = self.pinned.get(position)
        if item is not None and item in pinned and item not in placed:
            return Slot(pinned[item], PINNED, 1.0)
        if position in self.settings.exploration_slots:
            now = ctx.request.now_s
            limit_h = self.settings.exploration_max_age_s / 3600.0
            young = [
                c
                for c in candidates
                if c.item_id not in placed
                and c.meta is not None
                and c.meta.created_at_ms > 0
                and age_hours(c.meta, now) <= limit_h
            ]
            if young:
                newest = max(
                    young, key=lambda c: (c.meta.created_at_ms if c.meta else 0, c.item_id)
                )
                return Slot(newest, EXPLORE, 1.0)
        return None

    def _value(self, c: Candidate, now_s: float) -> float:
        """The score with the freshness boost: (1 + b·2^(−age/h)) · score."""
        boost = self.settings.freshness_boost
        if boost and c.meta is not None and c.meta.created_at_ms > 0:
            halvings = age_hours(c.meta, now_s) * 3600.0 / self.settings.freshness_half_life_s
            return c.score * (1.0 + boost * math.pow(2.0, -halvings))
        return c.score

    @staticmethod
    def _first_open(candidates: list[Candidate], placed: set[str]) -> bool:
        return any(c.item_id not in placed for c in candidates)

    def _pick(
        self,
        candidates: list[Candidate],
        placed: set[str],
        creators: Counter[str],
        categories: Counter[str],
        value: dict[str, float],
        vectors: dict[str, np.ndarray],
        chosen: list[np.ndarray],
    ) -> tuple[Candidate | None, int]:
        """MMR over the source's best few open candidates within the caps."""
        pool: list[Candidate] = []
        skipped = 0
        cap_creator, cap_category = self.settings.max_per_creator, self.settings.max_per_category
        for c in candidates:
            if c.item_id in placed:
                continue
            meta = c.meta
            if meta is not None and meta.creator and creators[meta.creator] >= cap_creator:
                skipped += 1
                continue
            if (
                cap_category is not None
                and meta is not None
                and meta.category
                and categories[meta.category] >= cap_category
            ):
                skipped += 1
                continue
            pool.append(c)
            if len(pool) >= self.settings.mmr_pool:
                break
        if not pool:
            return None, skipped
        lam = self.settings.mmr_lambda
        if lam >= 1.0 or not chosen:
            return pool[0], skipped
        placed_matrix = np.stack(chosen)

        def mmr(c: Candidate) -> float:
            v = vectors.get(c.item_id)
            similarity = float((placed_matrix @ v).max()) if v is not None else 0.0
            return lam * value[c.item_id] - (1.0 - lam) * similarity

        return max(pool, key=lambda c: (mmr(c), -pool.index(c))), skipped

    @staticmethod
    def _vectors(index: AnnIndex | None, candidates: list[Candidate]) -> dict[str, np.ndarray]:
        if index is None or not candidates:
            return {}
        ids = [c.item_id for c in candidates]
        rows = index.vectors(ids)
        return {i: rows[n] for n, i in enumerate(ids) if rows[n].any()}
