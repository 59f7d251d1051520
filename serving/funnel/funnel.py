"""The four-stage feed: retrieval → filtering → scoring → ordering, with a trace.

Sources run concurrently, each within its own time budget: a source that is late is left
out of this feed (and the trace says so) rather than holding it up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from features.bandit import Posterior, blend_weights, propensity_method
from features.errors import StoreUnavailableError
from features.landmarks import Ranked
from features.settings import LearningSettings
from serving.funnel.context import (
    Candidate,
    FeedContext,
    FeedRequest,
    Stopwatch,
    Trace,
    interests,
    request_rng,
    segment_of,
)
from serving.funnel.filters import post_filters, pre_filters
from serving.funnel.live import LiveReader, UserState
from serving.funnel.ordering import SlateBuilder, Slot
from serving.funnel.scoring import Scorer
from serving.funnel.settings import FunnelSettings
from serving.funnel.sources import SOURCES, CandidateSource, SimilarItemSource, TrendingSource

log = logging.getLogger(__name__)

POLICY = "thompson-sources"


@dataclass
class FeedResult:
    """A served feed, with what the impression log and the trace need."""

    request: FeedRequest
    slots: list[Slot]
    trace: Trace
    segment: str
    policy_version: str
    feature_names: list[str]
    degraded: bool = False
    # Each source's candidates, best first, before filtering (for per-source recall).
    retrieved: dict[str, list[str]] = field(default_factory=dict)


class Funnel:
    """Serves feeds from live state."""

    def __init__(
        self,
        live: LiveReader,
        settings: FunnelSettings,
        learning: LearningSettings,
        *,
        concurrent: bool = True,
    ) -> None:
        self.live = live
        self.settings = settings
        self.learning = learning
        for field_name, names in (("sources", settings.sources), ("fallback", settings.fallback)):
            unknown = sorted(set(names) - set(SOURCES))
            if unknown:
                raise ValueError(f"unknown candidate sources in funnel.{field_name}: {unknown}")
        self.sources: dict[str, CandidateSource] = {
            name: SOURCES[name](live, settings)
            for name, cfg in settings.sources.items()
            if cfg.enabled
        }
        self.fallback = [SOURCES[name](live, settings) for name in settings.fallback]
        self.similar = SimilarItemSource(live, settings)
        self.scorer = Scorer(live, list(self.sources), learning.ranker_min_examples)
        self.slates = SlateBuilder(
            settings, draws=learning.bandit_draws, floor=learning.bandit_floor
        )
        # A replay runs without time budgets, so it runs every source in the request's thread.
        self._pool = (
            ThreadPoolExecutor(max_workers=4, thread_name_prefix="source") if concurrent else None
        )

    def close(self) -> None:
        """Stop the source threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def feed(self, request: FeedRequest) -> FeedResult:
        """The user's feed; degraded (last good trending) when live state is unreachable."""
        try:
            return self._feed(request)
        except StoreUnavailableError as exc:
            log.warning("feed for %s from the last good data: %s", request.user_id, exc)
            return self._degraded(request)

    def similar_items(self, request: FeedRequest) -> FeedResult:
        """Items like ``request.item_id`` that may be shown (availability and the business
        rules), best first; empty and degraded when live state is unreachable."""
        try:
            return self._similar(request)
        except StoreUnavailableError as exc:
            log.warning("similar items for %s unavailable: %s", request.item_id, exc)
            return FeedResult(request, [], Trace(), "similar", "similar", [], True)

    def _similar(self, request: FeedRequest) -> FeedResult:
        trace = Trace()
        watch = Stopwatch(trace)
        user = UserState(None, None, [])
        ctx = FeedContext(
            request, user, "similar", request_rng(self.settings.seed, request.request_id), trace
        )
        ranked = self.similar.candidates(ctx, request.k * 3)
        watch.lap("retrieval")
        candidates = self._candidates({SimilarItemSource.name: ranked})
        for f in [*pre_filters(), *post_filters(self.settings, set(), set())]:
            candidates = f.apply(ctx, candidates)
        watch.lap("filtering")
        slots = [Slot(c, SimilarItemSource.name, 1.0) for c in candidates[: request.k]]
        for slot in slots:
            slot.candidate.score = slot.candidate.sources[SimilarItemSource.name]
        return FeedResult(request, slots, trace, "similar", "similar", [])

    def _feed(self, request: FeedRequest) -> FeedResult:
        trace = Trace()
        watch = Stopwatch(trace)
        settings = self.settings
        user = self.live.user_state(request.user_id, settings.recent_items, request.now_s)
        # Skipped and dismissed items are in the seen-set too; they are no interest.
        liked = [(i, ts) for i, ts in user.recent if i not in user.negative]
        recent_metas = self.live.metas([i for i, _ in liked])
        ctx = FeedContext(
            request,
            user,
            segment_of(user, request.device, settings.devices),
            request_rng(settings.seed, request.request_id),
            trace,
        )
        ctx.interests, ctx.interest_shares = interests(liked, recent_metas)
        watch.lap("user_state")

        by_source = self._retrieve(ctx)
        candidates = self._candidates(by_source)
        trace.removed["duplicates"] = sum(len(r) for r in by_source.values()) - len(candidates)
        watch.lap("retrieval")

        for f in pre_filters():
            candidates = f.apply(ctx, candidates)
        ids = [c.item_id for c in candidates]
        pinned_ids = [p.item_id for p in settings.pinned]
        state = self.live.candidate_state(request.user_id, ids + pinned_ids, request.now_s)
        for f in post_filters(settings, state.seen, state.negative):
            candidates = f.apply(ctx, candidates)
        pinned = self._pinned(ctx, pinned_ids, state.seen, state.negative)
        ctx.counts = state.counts
        watch.lap("filtering")

        prior = self.live.bandit.prior
        posteriors = self.live.posteriors(ctx.segment, request.now_s) if settings.learn_mix else {}
        ctx.source_weights = blend_weights(posteriors, list(self.sources), prior.alpha + prior.beta)
        version = self.scorer.score(ctx, candidates)
        watch.lap("scoring")

        slots = self.slates.build(ctx, candidates, request.k, posteriors, prior, pinned)
        watch.lap("ordering")
        if len(slots) < request.k and self.fallback:
            slots = self._backfilled(ctx, slots, by_source, posteriors, pinned)
            watch.lap("fallback")
        trace.stages_ms["total"] = sum(trace.stages_ms.values())
        return FeedResult(
            request,
            slots,
            trace,
            ctx.segment,
            f"{POLICY}/{version}",
            self.scorer.columns,
            retrieved={name: [i for i, _ in ranked] for name, ranked in by_source.items()},
        )

    def _retrieve(self, ctx: FeedContext) -> dict[str, Ranked]:
        """Every enabled source: the store-bound ones on the pool, concurrently with the local
        ones in this thread; a pooled source still running at its budget is left out."""
        started = time.perf_counter()
        futures: dict[str, Future[Ranked]] = {}
        timings: dict[str, float] = {}

        def run(source: CandidateSource, k: int) -> Ranked:
            t0 = time.perf_counter()
            try:
                return source.candidates(ctx, k)
            finally:
                timings[source.name] = (time.perf_counter() - t0) * 1000.0

        pool = self._pool
        for name, source in self.sources.items():
            if not source.local and pool is not None:
                futures[name] = pool.submit(run, source, self.settings.sources[name].k)
        out: dict[str, Ranked] = {}
        for name, source in self.sources.items():
            if source.local or pool is None:
                out[name] = self._guarded(
                    ctx, name, partial(run, source, self.settings.sources[name].k)
                )
                ctx.trace.sources[name]["ms"] = round(timings.get(name, 0.0), 3)
        for name, future in futures.items():
            budget_s = self.settings.sources[name].budget_ms / 1000.0
            remaining = max(budget_s - (time.perf_counter() - started), 0.0)
            try:
                out[name] = self._guarded(ctx, name, partial(future.result, timeout=remaining))
            except FutureTimeout:
                ctx.trace.sources[name] = {"candidates": 0, "timed_out": True}
            ctx.trace.sources[name]["ms"] = round(timings.get(name, budget_s * 1000.0), 3)
        return out

    @staticmethod
    def _guarded(ctx: FeedContext, name: str, fetch: Callable[[], Ranked]) -> Ranked:
        """A source's candidates; a broken source is logged and left out, never fatal."""
        try:
            ranked = fetch()
        except (StoreUnavailableError, FutureTimeout):
            raise
        except Exception:  # noqa: BLE001 - one broken source must not break the feed
            log.exception("candidate source %s failed", name)
            ctx.trace.sources[name] = {"candidates": 0, "error": True}
            return []
        ctx.trace.sources[name] = {"candidates": len(ranked)}
        return ranked

    def _backfilled(
        self,
        ctx: FeedContext,
        slots: list[Slot],
        by_source: dict[str, Ranked],
        posteriors: Mapping[str, Posterior],
        pinned: Mapping[str, Candidate],
    ) -> list[Slot]:
        """A slate the candidates ran out for, continued from each fallback source's deeper
        list in turn (through the same filters and caps) until it is full. What the sources
        found keeps its slots: a fallback only fills what would stay empty. It runs in the
        request's thread, as the last resort with nothing left to wait for."""
        request = ctx.request
        retrieved = {i for ranked in by_source.values() for i, _ in ranked}
        for source in self.fallback:
            name = source.name
            ranked = self._guarded(
                ctx, f"fallback:{name}", partial(source.candidates, ctx, self.settings.fallback_k)
            )
            added = self._candidates({name: [(i, s) for i, s in ranked if i not in retrieved]})
            retrieved.update(i for i, _ in ranked)
            for f in pre_filters():
                added = f.apply(ctx, added)
            ids = [c.item_id for c in added]
            state = self.live.candidate_state(request.user_id, ids, request.now_s)
            for f in post_filters(self.settings, state.seen, state.negative):
                added = f.apply(ctx, added)
            ctx.counts.update(state.counts)
            self.scorer.score(ctx, added)
            prior = self.live.bandit.prior
            slots = self.slates.build(ctx, added, request.k, posteriors, prior, pinned, slots)
            if len(slots) >= request.k:
                break
        return slots

    def _candidates(self, by_source: dict[str, Ranked]) -> list[Candidate]:
        """One candidate per item, remembering every source that proposed it."""
        merged: dict[str, Candidate] = {}
        for name in sorted(by_source):
            for rank, (item, score) in enumerate(by_source[name]):
                candidate = merged.get(item)
                if candidate is None:
                    candidate = merged[item] = Candidate(item)
                candidate.sources[name] = score
                candidate.ranks[name] = rank
        metas = self.live.metas(list(merged))
        for candidate, meta in zip(merged.values(), metas, strict=True):
            candidate.meta = meta
        return list(merged.values())

    def _pinned(
        self, ctx: FeedContext, ids: list[str], seen: set[str], negative: set[str]
    ) -> dict[str, Candidate]:
        """Pinned items that pass every filter the feed's candidates pass (their removals are
        not counted: they were never retrieved)."""
        if not ids:
            return {}
        kept = [
            Candidate(i, {"pinned": 1.0}, meta)
            for i, meta in zip(ids, self.live.metas(ids), strict=True)
        ]
        for f in [*pre_filters(), *post_filters(self.settings, seen, negative)]:
            kept = f.keep(ctx, kept)
        for c in kept:
            c.features = np.zeros(len(self.scorer.columns), np.float32)
        return {c.item_id: c for c in kept}

    def _degraded(self, request: FeedRequest) -> FeedResult:
        trace = Trace()
        ranked = self.live.last_good(request.k)
        name = TrendingSource.name  # the last good list is a global trending list
        slots = [Slot(Candidate(i, {name: s}, score=s), name, 1.0) for i, s in ranked]
        return FeedResult(request, slots, trace, "degraded", f"{POLICY}/degraded", [], True)

    @property
    def propensity_method(self) -> str:
        """How slot propensities are computed, for the impression log."""
        return propensity_method(self.learning.bandit_draws)
