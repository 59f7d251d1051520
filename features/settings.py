"""Settings owned by the live-state model: embedding size, decay and seen-set bounds."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

#: Default weight of each interaction type in popularity and trending counters.
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "like": 3.0,
    "share": 4.0,
    "add_to_cart": 4.0,
    "purchase": 8.0,
    "skip": 0.0,
    "dismiss": 0.0,
}


class FeatureSettings(BaseModel):
    """How live state is shaped and how fast it forgets."""

    # Dimension of every item, session and user embedding.
    embedding_dim: int = Field(64, ge=2, le=4096)
    # Half-lives of the decayed popularity counters, in seconds (shortest first).
    half_lives_s: list[float] = Field(default_factory=lambda: [3600.0, 86400.0], min_length=1)
    # Weight each interaction type adds to popularity counters; unknown types add 0.
    event_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    # Half-life of co-visitation pair counts, in seconds.
    covisitation_half_life_s: float = Field(30 * 86400.0, gt=0)
    # How many of a user's latest items pair with each new event.
    covisitation_window: int = Field(3, ge=1, le=100)
    # Items touched more than this many seconds before an event do not pair with it.
    covisitation_max_gap_s: float = Field(86400.0, gt=0)
    # Count each pair only under the earlier item ("what users went on to next", False) or
    # under both (True). Directed is the default: sequential rules beat symmetric association
    # rules for next-item recommendation (Ludewig & Jannach 2018), at 60% of the writes.
    covisitation_symmetric: bool = Field(False)
    # Most neighbours kept per item.
    covisitation_neighbours: int = Field(100, ge=1, le=10_000)
    # Half-life of the session embedding, in seconds.
    session_half_life_s: float = Field(600.0, gt=0)
    # A gap longer than this between a user's events starts a new session.
    session_gap_s: float = Field(1800.0, gt=0)
    # Half-life of the long-term user embedding, in seconds.
    user_half_life_s: float = Field(14 * 86400.0, gt=0)
    # HNSW graph degree (build parameter).
    ann_m: int = Field(16, ge=2, le=128)
    # HNSW construction beam (build parameter).
    ann_ef_construction: int = Field(200, ge=8, le=4096)
    # HNSW search beam (query parameter; recall against speed).
    ann_ef_search: int = Field(64, ge=1, le=4096)
    # Most items remembered per user in the seen-set (oldest are evicted first).
    seen_max_items: int = Field(2000, ge=1, le=1_000_000)
    # A user's seen-set expires this many seconds after their last event.
    seen_ttl_s: int = Field(30 * 86400, ge=60)

    @field_validator("half_lives_s")
    @classmethod
    def _positive_sorted(cls, value: list[float]) -> list[float]:
        if any(h <= 0 for h in value):
            raise ValueError("every half-life must be > 0 seconds")
        return sorted(value)


#: Interaction types that count as a click for attribution, the bandit and the ranker.
DEFAULT_REWARD_TYPES: list[str] = ["click", "like", "share", "add_to_cart", "purchase"]


class LearningSettings(BaseModel):
    """How served feeds are joined to clicks, and how the bandit and the ranker learn."""

    # A click this many seconds after an impression still counts; after it, unclicked slots
    # become negatives.
    attribution_window_s: float = Field(300.0, gt=0, le=7 * 86400)
    # Interaction types that count as a click (a reward of 1).
    reward_types: list[str] = Field(default_factory=lambda: list(DEFAULT_REWARD_TYPES))
    # Most open impressions per user that a click without a request id is matched against.
    max_open_impressions: int = Field(50, ge=1, le=10_000)
    # Half-life of the bandit's impression and reward counts, in seconds (follows drift).
    bandit_half_life_s: float = Field(6 * 3600.0, gt=0)
    # Beta prior of every source's click-rate.
    bandit_prior_alpha: float = Field(1.0, gt=0)
    bandit_prior_beta: float = Field(20.0, gt=0)
    # Thompson draws per slot to estimate the propensity of each source.
    bandit_draws: int = Field(256, ge=16, le=100_000)
    # Share of each slot's probability spread evenly over the sources (keeps every
    # propensity above zero for off-policy evaluation).
    bandit_floor: float = Field(0.05, ge=0.0, le=1.0)
    # SGD learning rate of the online ranker.
    ranker_learning_rate: float = Field(0.005, gt=0, le=10.0)
    # L2 penalty of the online ranker.
    ranker_l2: float = Field(1e-4, ge=0.0)
    # Below this many learned examples the feed ranks by the documented heuristic.
    ranker_min_examples: int = Field(500, ge=0)
    # Seconds of event time between two refreshes of the item embeddings learned from
    # co-visitation, published as item upserts (0: off).
    embedding_refresh_s: float = Field(300.0, ge=0, le=30 * 86400)
    # A replay (evaluate, the demo) also waits for this many new interactions between two
    # refreshes: each one reads every item's co-visitation row.
    embedding_refresh_min_events: int = Field(2000, ge=0)
    # An item gets a learned embedding once it has co-visited this many distinct items.
    embedding_min_neighbours: int = Field(3, ge=1, le=10_000)
    # A refreshed vector is published again only when its cosine to the published one is
    # below this (1.0: every refresh republishes every vector).
    embedding_republish_cosine: float = Field(0.95, gt=0.0, le=1.0)
