"""Settings of the four-stage feed: which sources run with what budgets, the filters and
business rules, and how the ordering stage mixes, diversifies and explores."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field, field_validator


class SourceSettings(BaseModel):
    """One candidate source's switch and budgets."""

    # Whether feeds use this source.
    enabled: bool = True
    # Most candidates the source returns.
    k: int = Field(50, ge=1, le=10_000)
    # Time the source may take before the feed goes on without it, in milliseconds.
    budget_ms: float = Field(25.0, gt=0, le=10_000)


def _default_sources() -> dict[str, SourceSettings]:
    # About 250 candidates for a 20-item feed: enough for the filters and caps to leave
    # choice, few enough to score in a couple of milliseconds.
    return {
        "session_ann": SourceSettings(k=50),
        "user_ann": SourceSettings(k=50),
        "covisitation": SourceSettings(k=50),
        "trending": SourceSettings(k=50),
        "popular": SourceSettings(k=30),
        "fresh": SourceSettings(k=30),
    }


def merged_sources(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The default sources with ``overrides`` merged over them field by field.

    Configuration (TOML, environment) names only what it changes: ``popular.enabled =
    false`` switches one source off and leaves the others as they are; a new name adds a
    source.

    Examples:
        >>> merged = merged_sources({"popular": {"enabled": "false"}, "similar_item": {}})
        >>> merged["popular"]["enabled"], merged["popular"]["k"], sorted(merged)[:3]
        ('false', 30, ['covisitation', 'fresh', 'popular'])
    """
    merged: dict[str, Any] = {n: s.model_dump() for n, s in _default_sources().items()}
    for name, override in overrides.items():
        if isinstance(override, SourceSettings):
            override = override.model_dump(exclude_unset=True)
        if isinstance(override, Mapping):
            merged[name] = {**merged.get(name, {}), **override}
        else:
            merged[name] = override
    return merged


class PinnedItem(BaseModel):
    """An item shown at a fixed position of every feed (an editorial pick, a promotion)."""

    # The pinned item.
    item_id: str = Field(min_length=1, max_length=256)
    # Its 0-based position in the feed.
    position: int = Field(ge=0, le=10_000)


class FunnelSettings(BaseModel):
    """Retrieval → filtering → scoring → ordering."""

    # Candidate sources by registry name (see serving/funnel/sources.py).
    sources: dict[str, SourceSettings] = Field(default_factory=_default_sources)
    # Sources that backfill a feed the filters leave short of candidates (a cold store, sources
    # out of time, a user who has seen the top of every list), by registry name, tried in
    # turn until the feed can be filled.
    fallback: list[str] = Field(default_factory=lambda: ["popular"])
    # How deep a fallback source reads.
    fallback_k: int = Field(200, ge=1, le=10_000)
    # Latest items of the user read for co-visitation and category interests.
    recent_items: int = Field(10, ge=1, le=1000)
    # Categories of the user's recent items that the trending source also reads.
    interest_categories: int = Field(3, ge=0, le=50)
    # Leave out items the user already interacted with (off: re-consumption feeds, e.g. music).
    exclude_seen: bool = True
    # Creators whose items are never shown.
    blocked_creators: list[str] = Field(default_factory=list)
    # Categories never shown unless a request asks for them by name.
    restricted_categories: list[str] = Field(default_factory=list)
    # Items younger than this many seconds are held back (0: none).
    min_item_age_s: float = Field(0.0, ge=0)
    # Items older than this many seconds are dropped (none: no limit).
    max_item_age_s: float | None = Field(None, gt=0)
    # Most items per creator in one feed.
    max_per_creator: int = Field(3, ge=1, le=10_000)
    # Most items per category in one feed (none: no cap).
    max_per_category: int | None = Field(None, ge=1)
    # Devices that form their own bandit segment; any other device is "other".
    devices: list[str] = Field(default_factory=lambda: ["mobile", "web", "tablet", "tv"])
    # Whether the bandit's posteriors weigh the sources in the blend and explore them (off:
    # equal weights and no exploration, the ablation of the bandit).
    learn_mix: bool = True
    # Share of each slot's probability that Thompson sampling over the sources explores with;
    # the rest goes to the blended ranking's best remaining candidate.
    explore_share: float = Field(0.1, ge=0.0, le=1.0)
    # MMR trade-off between score (1) and novelty against items already placed (0).
    mmr_lambda: float = Field(0.8, ge=0.0, le=1.0)
    # How many of a source's best remaining candidates MMR chooses among.
    mmr_pool: int = Field(5, ge=1, le=100)
    # Relative score boost of a brand-new item, fading with its age.
    freshness_boost: float = Field(0.2, ge=0.0, le=10.0)
    # Age at which the freshness boost has halved, in seconds.
    freshness_half_life_s: float = Field(6 * 3600.0, gt=0)
    # 0-based feed positions reserved for exploring new items.
    exploration_slots: list[int] = Field(default_factory=lambda: [5])
    # Items younger than this may fill exploration slots, in seconds.
    exploration_max_age_s: float = Field(86400.0, gt=0)
    # Items placed at fixed positions of every feed.
    pinned: list[PinnedItem] = Field(default_factory=list)
    # Seed of the ordering policy's draws; mixed with each request id.
    seed: int = Field(0, ge=0)
    # How long global lists (trending, popular, fresh) and bandit posteriors are reused.
    live_lists_ttl_s: float = Field(1.0, ge=0.0, le=60.0)
    # Seconds between reloads of the ranker weights.
    model_reload_s: float = Field(5.0, gt=0, le=3600)

    @field_validator("exploration_slots")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if any(p < 0 for p in value):
            raise ValueError("exploration slots are 0-based positions (>= 0)")
        return sorted(set(value))
