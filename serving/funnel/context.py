"""What flows through the funnel: the request, the user's state, candidates and the trace."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.catalog import ItemMeta
from serving.funnel.live import UserState


@dataclass(frozen=True, slots=True)
class FeedRequest:
    """One feed request, as the API (or a replay) asks for it."""

    user_id: str
    k: int
    now_s: float
    request_id: str
    device: str | None = None
    categories: frozenset[str] = frozenset()  # allowed (empty: all)
    exclude_categories: frozenset[str] = frozenset()
    item_id: str | None = None  # the seed item of /similar


@dataclass(slots=True)
class Candidate:
    """An item some sources proposed, with every source's retrieval score."""

    item_id: str
    sources: dict[str, float] = field(default_factory=dict)
    meta: ItemMeta | None = None
    # 0-based rank of the item in each source that proposed it.
    ranks: dict[str, int] = field(default_factory=dict)
    score: float = 0.0
    features: np.ndarray | None = None
    vector: np.ndarray | None = None  # unit embedding from the replica, when it has one


@dataclass
class Trace:
    """What each stage did, for ``?debug=true``, metrics and the dashboard."""

    stages_ms: dict[str, float] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    scorer: dict[str, Any] = field(default_factory=dict)
    ordering: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "stages_ms": {k: round(v, 3) for k, v in self.stages_ms.items()},
            "sources": self.sources,
            "filters_removed": self.removed,
            "scorer": self.scorer,
            "ordering": self.ordering,
        }


class Stopwatch:
    """Times consecutive stages into a trace."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.trace.stages_ms[stage] = (now - self._last) * 1000.0
        self._last = now


@dataclass
class FeedContext:
    """A request with everything the stages share while serving it."""

    request: FeedRequest
    user: UserState
    segment: str
    rng: np.random.Generator
    trace: Trace = field(default_factory=Trace)
    interests: list[str] = field(default_factory=list)  # categories, strongest first
    interest_shares: dict[str, float] = field(default_factory=dict)
    counts: dict[str, tuple[float, float]] = field(default_factory=dict)  # trending counts
    # Each source's weight in the cold blend: its posterior click-rate in this segment.
    source_weights: dict[str, float] = field(default_factory=dict)


def segment_of(user: UserState, device: str | None, devices: list[str]) -> str:
    """The bandit's context segment: new or returning user, and device."""
    kind = "new" if user.is_new else "returning"
    return f"{kind}|{device if device in devices else 'other'}"


def request_rng(seed: int, request_id: str) -> np.random.Generator:
    """The ordering policy's generator for one request: the same seed and request id give
    the same draws, in any process."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


def interests(
    recent: list[tuple[str, float]], metas: list[ItemMeta | None]
) -> tuple[list[str], dict[str, float]]:
    """The categories of the user's recent items, most frequent first, and their shares."""
    counts = Counter(m.category for m in metas if m is not None and m.category)
    total = sum(counts.values())
    if not total:
        return [], {}
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    return ranked, {c: counts[c] / total for c in ranked}
