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
