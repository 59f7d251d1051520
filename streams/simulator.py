"""A seeded synthetic feed: users with latent tastes, sessions, Zipf-like popularity,
new items arriving, and occasional trending bursts.

The same seed always yields the same stream, so demos, benchmarks and tests are repeatable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from streams.schema import Interaction, InteractionType, Item

CATEGORIES = (
    "news", "sports", "music", "gaming", "food", "travel",
    "tech", "fashion", "comedy", "science", "pets", "diy",
)  # fmt: skip

#: Follow-up actions after a view and their probabilities; the rest stay plain views.
_AFTER_VIEW: tuple[tuple[InteractionType, float], ...] = (
    ("click", 0.30),
    ("like", 0.08),
    ("share", 0.02),
    ("add_to_cart", 0.03),
    ("purchase", 0.01),
    ("skip", 0.12),
    ("dismiss", 0.02),
)


@dataclass
class _Session:
    user: int
    session_id: str
    remaining: int


@dataclass(frozen=True)
class SimulatorConfig:
    """Shape of the synthetic stream."""

    users: int = 2_000
    items: int = 5_000
    categories: int = len(CATEGORIES)
    embedding_dim: int = 64
    zipf_exponent: float = 1.1
    concurrent_sessions: int = 200
    events_per_session: float = 12.0
    # Average simulated seconds between two events of the whole stream.
    interval_s: float = 0.005
    new_item_probability: float = 0.002
    burst_probability: float = 0.0005
    burst_share: float = 0.15
    burst_events: int = 2_000


class StreamSimulator:
    """Generates catalog items and then an endless, seeded interleaving of events.

    Examples:
        >>> sim = StreamSimulator(SimulatorConfig(users=10, items=20, embedding_dim=4), seed=7)
        >>> len(sim.initial_items())
        20
        >>> [type(e).__name__ for e in sim.events(3, start_ms=0)]
        ['Interaction', 'Interaction', 'Interaction']
        >>> a = StreamSimulator(SimulatorConfig(users=10, items=20, embedding_dim=4), seed=7)
        >>> list(a.events(5, start_ms=0)) == list(StreamSimulator(a.config, seed=7).events(5, 0))
        True
    """

    def __init__(self, config: SimulatorConfig, seed: int = 0) -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)
        n_cat = min(config.categories, len(CATEGORIES))
        self.categories = CATEGORIES[:n_cat]
        self._centroids = self._unit(self.rng.normal(size=(n_cat, config.embedding_dim)))
        self._item_ids: list[str] = []
        self._item_vectors: list[np.ndarray] = []
        self._item_category: list[int] = []
        self._zipf_cdf: dict[int, np.ndarray] = {}
        self._by_category: list[list[int]] = [[] for _ in range(n_cat)]
        for _ in range(config.items):
            self._new_item()
        # Each user cares about a few categories (a sparse Dirichlet draw).
        self.user_tastes = self.rng.dirichlet(np.full(n_cat, 0.3), size=config.users)
        self._sessions: list[_Session] = []
        self._session_seq = 0
        self._event_seq = 0
        self._burst_item: int | None = None
        self._burst_left = 0

    @staticmethod
    def _unit(m: np.ndarray) -> np.ndarray:
        unit: np.ndarray = m / np.linalg.norm(m, axis=-1, keepdims=True)
        return unit

    def _new_item(self) -> int:
        index = len(self._item_ids)
        category = int(self.rng.integers(len(self.categories)))
        vector = self._centroids[category] + 0.5 * self.rng.normal(size=self.config.embedding_dim)
        self._item_ids.append(f"i{index}")
        self._item_vectors.append(self._unit(vector))
        self._item_category.append(category)
        # A new item enters at a random popularity rank within its category.
        bucket = self._by_category[category]
        bucket.insert(int(self.rng.integers(len(bucket) + 1)), index)
        return index

    def _item_event(self, index: int, ts_ms: int) -> Item:
        category = self._item_category[index]
        return Item(
            item_id=self._item_ids[index],
            ts=ts_ms,
            category=self.categories[category],
            creator=f"creator{index % 97}",
            tags=[self.categories[category]],
            title=f"{self.categories[category]} item {index}",
            created_at=ts_ms,
            embedding=[round(float(x), 6) for x in self._item_vectors[index]],
        )

    def initial_items(self, ts_ms: int = 0) -> list[Item]:
        """Catalog events for every item that exists before the stream starts."""
        return [self._item_event(i, ts_ms) for i in range(len(self._item_ids))]

    def _zipf_pick(self, bucket: list[int]) -> int:
        cdf = self._zipf_cdf.get(len(bucket))
        if cdf is None:
            weights = np.arange(1, len(bucket) + 1, dtype=np.float64) ** -self.config.zipf_exponent
            cdf = self._zipf_cdf[len(bucket)] = np.cumsum(weights) / weights.sum()
        rank = int(np.searchsorted(cdf, self.rng.random(), side="right"))
        return bucket[min(rank, len(bucket) - 1)]

    def _pick_item(self, user: int) -> int:
        if self._burst_left > 0 and self._burst_item is not None:
            self._burst_left -= 1
            if self.rng.random() < self.config.burst_share:
                return self._burst_item
        category = int(self.rng.choice(len(self.categories), p=self.user_tastes[user]))
        bucket = self._by_category[category] or [int(self.rng.integers(len(self._item_ids)))]
        return self._zipf_pick(bucket)

    def _session(self) -> _Session:
        if len(self._sessions) < self.config.concurrent_sessions:
            self._open_session()
        slot = int(self.rng.integers(len(self._sessions)))
        session = self._sessions[slot]
        session.remaining -= 1
        if session.remaining <= 0:
            self._sessions.pop(slot)
        return session

    def _open_session(self) -> None:
        self._session_seq += 1
        user = int(self.rng.integers(self.config.users))
        length = 1 + int(self.rng.poisson(self.config.events_per_session))
        self._sessions.append(_Session(user, f"s{self._session_seq}", length))

    def events(self, n: int, start_ms: int) -> Iterator[Interaction | Item]:
        """The next ``n`` events, timestamped from ``start_ms`` at the configured spacing."""
        t = float(start_ms)
        for _ in range(n):
            t += float(self.rng.exponential(self.config.interval_s * 1000.0))
            ts = int(t)
            if self.rng.random() < self.config.new_item_probability:
                yield self._item_event(self._new_item(), ts)
                continue
            if self._burst_left <= 0 and self.rng.random() < self.config.burst_probability:
                self._burst_item = int(self.rng.integers(len(self._item_ids)))
                self._burst_left = self.config.burst_events
            yield self._interaction(ts)

    def _interaction(self, ts: int) -> Interaction:
        session = self._session()
        user = session.user
        item = self._pick_item(user)
        kind: InteractionType = "view"
        roll = float(self.rng.random())
        for candidate, probability in _AFTER_VIEW:
            if roll < probability:
                kind = candidate
                break
            roll -= probability
        self._event_seq += 1
        return Interaction(
            event_id=f"e{self._event_seq}",
            user_id=f"u{user}",
            item_id=self._item_ids[item],
            type=kind,
            ts=ts,
            session_id=session.session_id,
            dwell_ms=int(self.rng.exponential(8_000.0)),
            context={"device": "mobile" if user % 3 else "desktop"},
        )
