"""Filtering: what must not be shown. Each filter is pure over the candidates and the
context, and the funnel records how many candidates each one removed."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from serving.funnel.context import Candidate, FeedContext
from serving.funnel.settings import FunnelSettings


class Filter(ABC):
    """Keeps the candidates that may be shown."""

    name: ClassVar[str]

    def apply(self, ctx: FeedContext, candidates: list[Candidate]) -> list[Candidate]:
        """The kept candidates, in the same order; the trace learns how many went."""
        kept = self._apply(ctx, candidates)
        removed = len(candidates) - len(kept)
        ctx.trace.removed[self.name] = ctx.trace.removed.get(self.name, 0) + removed
        return kept

    def keep(self, ctx: FeedContext, candidates: list[Candidate]) -> list[Candidate]:
        """The kept candidates, without counting removals."""
        return self._apply(ctx, candidates)

    @abstractmethod
    def _apply(self, ctx: FeedContext, candidates: list[Candidate]) -> list[Candidate]: ...


class RequestCategoryFilter(Filter):
    """Categories the request allows (when it names any) and denies."""

    name = "request_categories"

    def _apply(self, ctx: FeedContext, candidates: list[Candidate]) -> list[Candidate]:
        allowed, denied = ctx.request.categories, ctx.request.exclude_categories
        if not allowed and not denied:
            return candidates
        out = []
        for c in candidates:
            category = c.meta.category if c.meta is not None else None
            if allowed and category not in allowed:
                continue
            if category is not None and category in denied:
                continue
            out.append(c)
        return out


class UnavailableFilter(Filter):
    """Deleted or unavailable items (unknown items count as available: they may be stubs)."""

    name = "unavailable"

    def _apply(self, ctx: FeedContext, candidates: list[Candidate]) -> list[Candidate]:
        return [c for c in candidates if c.meta is None or c.meta.available]


class SeenFilter(Filter):
    """Items the user already interacted with."""

    name = "seen"

    def __init__(self, seen: set[str]) -> None:
        self.seen = seen

    def _apply(self, ctx: FeedContext, candidates: list[Candidate]) -> list[Candidate]:
        return [c for c in candidates if c.item_id not in self.seen]


class NegativeFilter(Filter):
    """Items the user skipped or dismissed."""

    name = "dismissed_or_skipped"

    def __init__(self, negative: set[str]) -> None:
        self.negative = negative

    def _apply(self, ctx: FeedContext, candidates: list[Candidate]) -> list[Candidate]:
        return [c for c in candidates if c.item_id not in self.negative]


class BlockedCreatorFilter(Filter):
    """Creators blocked in config."""

    name = "blocked_creators"

    def __init__(self, settings: FunnelSettings) -> None:
        self.blocked = frozenset(settings.blocked_creators)

    def _apply(self, ctx: FeedContext, candidates: list[Candidate]) -> list[Candidate]:
        if not self.blocked:
            return candidates
        return [c for c in candidates if c.meta is None or c.meta.creator not in self.blocked]


class RestrictedCategoryFilter(Filter):
    """Restricted categories, unless the request asked for them by name."""

    name = "restricted_categories"

    def __init__(self, settings: FunnelSettings) -> None:
        self.restricted = frozenset(settings.restricted_categories)

    def _apply(self, ctx: FeedContext, candidates: list[Candidate]) -> list[Candidate]:
        blocked = self.restricted - ctx.request.categories
        if not blocked:
            return candidates
        return [c for c in candidates if c.meta is None or c.meta.category not in blocked]


class ItemAgeFilter(Filter):
    """Items younger than the minimum or older than the maximum age."""

    name = "item_age"

    def __init__(self, settings: FunnelSettings) -> None:
        self.min_ms = settings.min_item_age_s * 1000.0
        self.max_ms = settings.max_item_age_s * 1000.0 if settings.max_item_age_s else None

    def _apply(self, ctx: FeedContext, candidates: list[Candidate]) -> list[Candidate]:
        if not self.min_ms and self.max_ms is None:
            return candidates
        now_ms = ctx.request.now_s * 1000.0
        out = []
        for c in candidates:
            if c.meta is None or c.meta.created_at_ms <= 0:
                out.append(c)
                continue
            age = now_ms - c.meta.created_at_ms
            if age >= self.min_ms and (self.max_ms is None or age <= self.max_ms):
                out.append(c)
        return out


def pre_filters() -> list[Filter]:
    """Filters that only need the request and the catalog."""
    return [RequestCategoryFilter(), UnavailableFilter()]


def post_filters(settings: FunnelSettings, seen: set[str], negative: set[str]) -> list[Filter]:
    """Filters that need the user's state and the business rules."""
    return [
        SeenFilter(seen if settings.exclude_seen else set()),
        NegativeFilter(negative),
        BlockedCreatorFilter(settings),
        RestrictedCategoryFilter(settings),
        ItemAgeFilter(settings),
    ]
