"""A seeded synthetic feed: users with latent tastes, sessions, Zipf-like popularity, new
items arriving, items retiring, trending bursts, and tastes that drift.

The same seed always yields the same stream, so demos, benchmarks and tests are repeatable.
Churn and drift are off by default and draw from generators of their own: with them off, a
seed yields exactly the stream it always did.

The simulator is also the ground truth: :meth:`StreamSimulator.relevance` says how much a
user likes an item at a given event time, so a click model can be driven by it and a
bandit's regret measured against it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
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

#: Scale of an item's own noise around its category's centroid.
_ITEM_NOISE = 0.5


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
    # Chance that an event retires a live item instead (0: items live for ever).
    churn_probability: float = 0.0
    # Share of retirements sent as deletes; the rest are upserts with available=False.
    churn_delete_share: float = 0.5
    # Simulated seconds over which users' tastes move to another category (0: no drift).
    taste_drift_period_s: float = 0.0
    # Share of users whose taste drifts.
    taste_drift_share: float = 1.0
    # Simulated seconds of one cycle of category popularity (0: categories hold steady).
    category_shift_period_s: float = 0.0
    # A category's weight swings within exp(±amplitude) over the cycle.
    category_shift_amplitude: float = 1.0
    # relevance = sigmoid(sharpness · (affinity − midpoint)); affinity is about the user's
    # taste share of the item's category (1 for an item of a user's only category).
    relevance_sharpness: float = 8.0
    relevance_midpoint: float = 0.4

    def __post_init__(self) -> None:
        for name in ("churn_probability", "churn_delete_share", "taste_drift_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        for name in ("taste_drift_period_s", "category_shift_period_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 turns it off)")


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

        Retired items come as deletes or as unavailable upserts, and are served no more:

        >>> churn = SimulatorConfig(users=10, items=50, embedding_dim=4, churn_probability=0.2)
        >>> sim = StreamSimulator(churn, seed=1)
        >>> gone = [e for e in sim.events(200, 0) if isinstance(e, Item)
        ...         and (e.op == "delete" or not e.available)]
        >>> len(gone) > 0 and all(not sim.is_live(e.item_id) for e in gone)
        True

        Ground truth: a relevance in [0, 1], higher in the user's favourite category:

        >>> sim = StreamSimulator(SimulatorConfig(users=5, items=100, embedding_dim=16), seed=3)
        >>> favourite = sim.categories[int(sim.taste("u0").argmax())]
        >>> on = [i for i in sim.live_item_ids() if sim.item_category(i) == favourite]
        >>> off = [i for i in sim.live_item_ids() if sim.item_category(i) != favourite]
        >>> bool(sim.relevances("u0", on).mean() > sim.relevances("u0", off).mean())
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
        self._index: dict[str, int] = {}
        self._created_ms: dict[int, int] = {}
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
        # Churn and drift use generators of their own so that, off, they change nothing.
        self._churn_rng = np.random.default_rng([seed, 1])
        self._retired: set[int] = set()
        self._drift_target = self._drift_targets(np.random.default_rng([seed, 2]))
        self._origin_ms: int | None = None  # event time of the stream's start (drift's zero)
        self._now_ms = 0
        # An item's expected dot product with its own centroid is 1/sqrt(1 + noise²·dim):
        # scaling by the inverse makes affinities comparable across dimensions.
        self._affinity_scale = math.sqrt(1.0 + _ITEM_NOISE**2 * config.embedding_dim)

    @staticmethod
    def _unit(m: np.ndarray) -> np.ndarray:
        unit: np.ndarray = m / np.linalg.norm(m, axis=-1, keepdims=True)
        return unit

    def _new_item(self) -> int:
        index = len(self._item_ids)
        category = int(self.rng.integers(len(self.categories)))
        noise = _ITEM_NOISE * self.rng.normal(size=self.config.embedding_dim)
        vector = self._centroids[category] + noise
        self._item_vectors.append(self._unit(vector))
        self._item_category.append(category)
        # Ids last, so a reader on another thread (the demo's clicks) never sees half an item.
        self._index[f"i{index}"] = index
        self._item_ids.append(f"i{index}")
        # A new item enters at a random popularity rank within its category.
        bucket = self._by_category[category]
        bucket.insert(int(self.rng.integers(len(bucket) + 1)), index)
        return index

    def _item_event(self, index: int, ts_ms: int, *, available: bool = True) -> Item:
        category = self._item_category[index]
        # A retirement keeps the item's creation time; an announcement sets it.
        created = self._created_ms.setdefault(index, ts_ms)
        return Item(
            item_id=self._item_ids[index],
            ts=ts_ms,
            category=self.categories[category],
            creator=f"creator{index % 97}",
            tags=[self.categories[category]],
            title=f"{self.categories[category]} item {index}",
            available=available,
            created_at=created if not available else ts_ms,
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

    def _pick_item(self, user: int, ts_ms: int) -> int:
        if self._burst_left > 0 and self._burst_item is not None:
            self._burst_left -= 1
            if self.rng.random() < self.config.burst_share:
                return self._burst_item
        tastes = self._taste_at(user, ts_ms) if self._drifts else self.user_tastes[user]
        category = int(self.rng.choice(len(self.categories), p=tastes))
        bucket = self._by_category[category]
        if not bucket:  # a category with no items at all: any item
            item = int(self.rng.integers(len(self._item_ids)))
            # Churn never empties a category that had items: a retired pick gives way to
            # the live items of its category.
            retired = item in self._retired
            bucket = self._by_category[self._item_category[item]] if retired else [item]
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
        if self._origin_ms is None:
            self._origin_ms = start_ms
        t = float(start_ms)
        for _ in range(n):
            t += float(self.rng.exponential(self.config.interval_s * 1000.0))
            ts = self._now_ms = int(t)
            if self.rng.random() < self.config.new_item_probability:
                yield self._item_event(self._new_item(), ts)
                continue
            if self.config.churn_probability > 0 and (
                self._churn_rng.random() < self.config.churn_probability
            ):
                retirement = self._retire(ts)
                if retirement is not None:
                    yield retirement
                    continue
            if self._burst_left <= 0 and self.rng.random() < self.config.burst_probability:
                self._burst_item = int(self.rng.integers(len(self._item_ids)))
                # A retired item cannot trend (only possible with churn on).
                gone = self._burst_item in self._retired
                self._burst_left = 0 if gone else self.config.burst_events
            yield self._interaction(ts)

    def _interaction(self, ts: int) -> Interaction:
        session = self._session()
        user = session.user
        item = self._pick_item(user, ts)
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

    # --- churn ---------------------------------------------------------------------------

    def _retire(self, ts_ms: int) -> Item | None:
        """Take a live item out of the catalog; None when none may go."""
        # A category's last live item stays, so every category keeps something to serve.
        buckets = [b for b in self._by_category if len(b) > 1]
        if not buckets:
            return None
        sizes = np.array([len(b) for b in buckets], dtype=np.float64)
        bucket = buckets[int(self._churn_rng.choice(len(buckets), p=sizes / sizes.sum()))]
        index = bucket.pop(int(self._churn_rng.integers(len(bucket))))
        self._retired.add(index)
        if index == self._burst_item:
            self._burst_left = 0  # a retired item trends no more
        if self._churn_rng.random() < self.config.churn_delete_share:
            return Item(item_id=self._item_ids[index], ts=ts_ms, op="delete")
        return self._item_event(index, ts_ms, available=False)

    def is_live(self, item_id: str) -> bool:
        """Whether the item exists and has not been retired."""
        index = self._index.get(item_id)
        return index is not None and index not in self._retired

    def knows_item(self, item_id: str) -> bool:
        """Whether the simulator ever created the item (live or retired)."""
        return item_id in self._index

    def live_item_ids(self) -> list[str]:
        """Every item that may still be served, in creation order."""
        return [i for n, i in enumerate(self._item_ids) if n not in self._retired]

    # --- drift and ground truth --------------------------------------------------------

    @property
    def _drifts(self) -> bool:
        c = self.config
        return c.taste_drift_period_s > 0 or c.category_shift_period_s > 0

    def _drift_targets(self, rng: np.random.Generator) -> np.ndarray:
        """Where each user's taste ends up: all on a category other than the favourite one."""
        n_cat = len(self.categories)
        if self.config.taste_drift_period_s <= 0 or n_cat < 2:
            return self.user_tastes
        favourite = self.user_tastes.argmax(axis=1)
        target = (favourite + rng.integers(1, n_cat, size=len(favourite))) % n_cat
        drifting = rng.random(len(favourite)) < self.config.taste_drift_share
        targets: np.ndarray = np.where(drifting[:, None], np.eye(n_cat)[target], self.user_tastes)
        return targets

    @property
    def now_ms(self) -> int:
        """Event time of the latest event generated (the simulator's clock)."""
        return self._now_ms

    def _taste_at(self, user: int, ts_ms: int | None) -> np.ndarray:
        c = self.config
        # Drift runs from the start time of the first `events` call (event time 0 before).
        now = self._now_ms if ts_ms is None else ts_ms
        elapsed_s = (now - (self._origin_ms or 0)) / 1e3
        taste = self.user_tastes[user]
        if c.taste_drift_period_s > 0:
            share = min(max(elapsed_s / c.taste_drift_period_s, 0.0), 1.0)
            taste = (1.0 - share) * taste + share * self._drift_target[user]
        if c.category_shift_period_s > 0:
            n_cat = len(self.categories)
            phases = 2.0 * np.pi * np.arange(n_cat) / n_cat  # categories peak in turn
            angle = 2.0 * np.pi * elapsed_s / c.category_shift_period_s
            taste = taste * np.exp(c.category_shift_amplitude * np.sin(angle + phases))
        weights: np.ndarray = taste / taste.sum()
        return weights

    def _user(self, user_id: str) -> int:
        user = int(user_id[1:]) if user_id[:1] == "u" and user_id[1:].isdigit() else -1
        if not 0 <= user < self.config.users:
            raise KeyError(f"unknown simulated user {user_id!r}")
        return user

    def _item(self, item_id: str) -> int:
        index = self._index.get(item_id)
        if index is None:
            raise KeyError(f"unknown simulated item {item_id!r}")
        return index

    def taste(self, user_id: str, ts_ms: int | None = None) -> np.ndarray:
        """The user's share of interest per category (sums to 1) at ``ts_ms`` (default: the
        latest event's time), drift included; aligned with :attr:`categories`. Drift is timed
        from the ``start_ms`` of the first :meth:`events` call (from 0 before it)."""
        return self._taste_at(self._user(user_id), ts_ms).copy()

    def user_vector(self, user_id: str, ts_ms: int | None = None) -> np.ndarray:
        """The user's latent vector: the taste-weighted mix of category centroids."""
        vector: np.ndarray = self.taste(user_id, ts_ms) @ self._centroids
        return vector

    def item_vector(self, item_id: str) -> np.ndarray:
        """The item's unit embedding (as its catalog event carries it)."""
        return self._item_vectors[self._item(item_id)].copy()

    def item_category(self, item_id: str) -> str:
        """The item's category."""
        return self.categories[self._item_category[self._item(item_id)]]

    def relevances(
        self, user_id: str, item_ids: Sequence[str], ts_ms: int | None = None
    ) -> np.ndarray:
        """Ground-truth relevance in [0, 1] of each item to the user at ``ts_ms``."""
        if not item_ids:
            return np.zeros(0)
        vectors = np.stack([self._item_vectors[self._item(i)] for i in item_ids])
        affinity = vectors @ self.user_vector(user_id, ts_ms) * self._affinity_scale
        c = self.config
        scores: np.ndarray = 1.0 / (
            1.0 + np.exp(-c.relevance_sharpness * (affinity - c.relevance_midpoint))
        )
        return scores

    def relevance(self, user_id: str, item_id: str, ts_ms: int | None = None) -> float:
        """Ground-truth relevance in [0, 1] of one item to the user at ``ts_ms``."""
        return float(self.relevances(user_id, [item_id], ts_ms)[0])
