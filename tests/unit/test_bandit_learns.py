"""Closed loop, embedded: the real funnel serves feeds, simulated users click, the real worker
joins clicks to the logged impressions, and the source bandit follows a change in which
source users click.

Everything runs on the in-memory store and the in-process bus with explicit event times
(``FeedRequest.now_s`` and each event's ``ts``), so the run is seeded and deterministic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import msgspec
import numpy as np
import pytest

from features.bandit import Posterior, SourceBandit, source_probabilities
from features.catalog import ItemMeta
from features.keys import Keys
from features.settings import LearningSettings
from features.stores.memory_store import InMemoryStore
from serving.feed import FeedService
from serving.funnel.context import Candidate, FeedContext, FeedRequest, request_rng
from serving.funnel.funnel import FeedResult, Funnel
from serving.funnel.live import UserState
from serving.funnel.ordering import SlateBuilder
from serving.funnel.settings import FunnelSettings, SourceSettings
from serving.metrics import FeedMetrics
from serving.resources import Resources
from streamrec.settings import Settings
from streamrec.wiring import build_worker, validator
from streams.io.bus import InProcessBus
from streams.io.partitioning import partition_for
from streams.schema import Impression, Interaction, Item
from streams.settings import TopicSettings, WorkerSettings
from streams.worker.runtime import Worker
from tests.reads import posteriors as read_posteriors

pytestmark = pytest.mark.timeout(60)

SOURCES = ("covisitation", "fresh", "popular", "trending")
DEVICE = "web"
SEGMENT = f"returning|{DEVICE}"
T0_S = 1_700_000_000.0  # event time of the first feed (in the past: the worker's clock is real)
STEP_S = 1.0  # event time between two served feeds
K = 10  # slots per feed
WINDOW_S = 30.0  # attribution window
HALF_LIFE_S = 300.0  # bandit half-life: long enough to be stable, short enough to follow drift
BASE_RATE = 0.05


@dataclass
class Served:
    """One served feed and the clicks it got."""

    result: FeedResult
    clicked: list[str] = field(default_factory=list)  # the source of each clicked slot


@dataclass
class Loop:
    """Funnel + FeedService + worker on one in-memory store and one in-process bus."""

    seed: int = 7
    batch_size: int = 5000  # the worker's batch size (small: a worker that is behind)
    explore_share: float = FunnelSettings().explore_share
    users: list[str] = field(default_factory=list)
    served: list[Served] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.settings = Settings(
            learning=LearningSettings(
                attribution_window_s=WINDOW_S,
                bandit_half_life_s=HALF_LIFE_S,
            ),
            funnel=FunnelSettings(
                # A generous budget: a source cut off by a slow CI machine would bias shares.
                sources={s: SourceSettings(k=50, budget_ms=2_000.0) for s in SOURCES},
                live_lists_ttl_s=0.0,  # every feed reads the posteriors as the worker left them
                exploration_slots=[],  # every slot is the bandit's choice
                explore_share=self.explore_share,
                max_per_creator=10,
            ),
            topics=TopicSettings(partitions=2),
            worker=WorkerSettings(batch_size=self.batch_size),
        )
        self.keys = Keys(self.settings.namespace)
        self.bus = InProcessBus(partitions=2, topics=self.settings.topics)
        self.store = InMemoryStore()
        self.worker: Worker = build_worker(
            self.settings,
            self.bus.source(self.settings.topics.worker_inputs, "g"),
            self.store,
            self.bus,
        )
        resources = Resources(
            store=self.store,
            sink=self.bus,
            keys=self.keys,
            features=self.settings.features,
            validator=validator(self.settings),
            transport_probe=lambda: (True, "bus"),
            learning=self.settings.learning,
            funnel=self.settings.funnel,
        )
        self.funnel = Funnel(resources.live, self.settings.funnel, self.settings.learning)
        self.service = FeedService(self.funnel, self.bus, FeedMetrics())
        self.rng = np.random.default_rng(self.seed)
        self.bandit = SourceBandit(
            self.keys,
            half_life_s=HALF_LIFE_S,
            prior_alpha=self.settings.learning.bandit_prior_alpha,
            prior_beta=self.settings.learning.bandit_prior_beta,
        )
        self.now_s = T0_S
        self._events = 0

    def close(self) -> None:
        self.funnel.close()

    def drain(self) -> None:
        """Apply everything on the bus."""
        while self.worker.run_once() or any(self.worker.source.lag().values()):
            pass

    def _event_id(self) -> str:
        self._events += 1
        return f"e{self._events}"

    def seed_catalog(self, n_items: int = 300, n_users: int = 120) -> None:
        """Items over 30 days, and an hour of views so that every source has candidates."""
        now_ms = int(T0_S * 1000)
        for n in range(n_items):
            self.bus.send(
                Item(
                    item_id=f"i{n:03d}",
                    ts=now_ms - 3_600_000,
                    category=f"c{n % 6}",
                    creator=f"cr{n % 60}",
                    created_at=now_ms - (n_items - n) * 8_640_000,  # i299 is the newest
                )
            )
        # Zipf-like popularity over the older items, so popular and trending differ from fresh.
        weights = 1.0 / np.arange(1, 251) ** 0.8
        weights /= weights.sum()
        self.users = [f"u{n:03d}" for n in range(n_users)]
        for u, user in enumerate(self.users):
            items = self.rng.choice(250, size=6, replace=False, p=weights)
            for j, item in enumerate(items):
                self.bus.send(
                    Interaction(
                        event_id=self._event_id(),
                        user_id=user,
                        item_id=f"i{item:03d}",
                        type="view",
                        ts=now_ms - 3_000_000 + u * 10_000 + j * 60_000,
                    )
                )
        self.drain()

    def run(self, feeds: int, rates: dict[str, float], drain_every: int = 5) -> list[Served]:
        """Serve ``feeds`` feeds (one per STEP_S of event time, users in turn), click each
        slot with its source's rate, and let the worker apply everything as it goes."""
        out: list[Served] = []
        for n in range(feeds):
            user = self.users[len(self.served) % len(self.users)]
            request = FeedRequest(
                user_id=user,
                k=K,
                now_s=self.now_s,
                request_id=f"r{len(self.served)}",
                device=DEVICE,
            )
            served = Served(self.service.feed(request))
            for position, slot in enumerate(served.result.slots):
                if self.rng.random() < rates[slot.source]:
                    served.clicked.append(slot.source)
                    self.bus.send(
                        Interaction(
                            event_id=self._event_id(),
                            user_id=user,
                            item_id=slot.candidate.item_id,
                            type="click",
                            ts=int(self.now_s * 1000) + 2_000 + 100 * position,
                            request_id=request.request_id,
                            position=position,
                        )
                    )
            self.served.append(served)
            out.append(served)
            self.now_s += STEP_S
            if n % drain_every == drain_every - 1:
                self.drain()
        self.drain()
        return out

    def posterior_means(self) -> dict[str, float]:
        found = read_posteriors(self.bandit, self.store, SEGMENT, self.now_s)
        return {s: round(p.mean, 4) for s, p in sorted(found.items())}


def share(feeds: list[Served], source: str) -> float:
    """Fraction of the slots of ``feeds`` that ``source`` filled."""
    counts = Counter(slot.source for f in feeds for slot in f.result.slots)
    return counts[source] / max(sum(counts.values()), 1)


@pytest.fixture
def make_loop() -> Iterator[Callable[..., Loop]]:
    """Builds seeded loops with their catalog and history, and closes them afterwards."""
    made: list[Loop] = []

    def make(**kwargs: float) -> Loop:
        loop = Loop(**kwargs)
        made.append(loop)
        loop.seed_catalog()
        return loop

    yield make
    for loop in made:
        loop.close()


def test_the_bandit_moves_slots_to_the_source_users_start_clicking(
    make_loop: Callable[..., Loop],
) -> None:
    """Phase 1 (300 feeds of 10 slots): every source is clicked 5% of the time. Phase 2:
    "fresh" is clicked 40% of the time. Bound: within 3,000 impression slots (300 feeds)
    after the change, fresh fills more than twice its phase-1 share (and over 60%) of the
    slots of a 50-feed window; by the end of 300 feeds it fills over 60% of them and its
    posterior mean is more than 3x any other source's. (With the default 10% exploration the
    posteriors move the blend's source weights, which also decide the credited source; seed 7
    reached the bound after 100 feeds, the attribution window alone delays learning by 30.)"""
    loop = make_loop(seed=7)
    base = {s: BASE_RATE for s in SOURCES}
    phase1 = loop.run(300, base)
    assert all(len(f.result.slots) == K for f in phase1), "every feed must be full"
    assert {f.result.segment for f in phase1} == {SEGMENT}
    assert Counter(slot.source for f in phase1 for slot in f.result.slots).keys() == set(SOURCES)
    before = share(phase1, "fresh")
    # All sources are equally good: fresh must not already dominate, or "twice" means little.
    assert 0.05 <= before <= 0.5, before

    phase2 = loop.run(300, {**base, "fresh": 0.40})
    windows = [share(phase2[n : n + 50], "fresh") for n in range(0, len(phase2) - 49, 10)]
    reached = next((n * 10 + 50 for n, s in enumerate(windows) if s > max(2 * before, 0.6)), None)
    assert reached is not None and reached <= 300, (before, [round(w, 2) for w in windows])
    assert share(phase2[-50:], "fresh") > 0.6
    means = loop.posterior_means()
    assert means["fresh"] > 3 * max(m for s, m in means.items() if s != "fresh"), means


@pytest.mark.parametrize(
    "batch_size",
    [
        pytest.param(5000, id="caught-up"),
        pytest.param(8, id="behind"),
    ],
)
def test_every_closed_feed_teaches_the_bandit_each_slot_once(
    make_loop: Callable[..., Loop], batch_size: int
) -> None:
    """The bandit's decayed counts are exactly what the simulation served and clicked: one
    pull per slot of every feed whose attribution window the impressions partition's event
    time has passed, one reward per clicked slot, nothing yet for feeds still open. The same
    must hold when the worker is behind and applies its backlog in small batches."""
    loop = make_loop(seed=3, batch_size=batch_size)
    loop.run(200, {**{s: BASE_RATE for s in SOURCES}, "fresh": 0.3, "popular": 0.0})
    topic = loop.settings.topics.impressions
    clocks = {int(p): int(t) for p, t in loop.store.hgetall(loop.keys.watermarks(topic)).items()}
    window_ms = int(WINDOW_S * 1000)
    rate = np.log(2.0) / HALF_LIFE_S
    shown: Counter[str] = Counter()
    rewards: Counter[str] = Counter()
    still_open = 0
    for served in loop.served:
        request = served.result.request
        ts_ms = int(request.now_s * 1000)
        partition = partition_for(request.user_id.encode(), loop.bus.partitions)
        if ts_ms + window_ms > clocks[partition]:
            still_open += 1
            continue
        weight = float(np.exp(-rate * (loop.now_s - ts_ms / 1000.0)))
        for slot in served.result.slots:
            shown[slot.source] += weight
        for source in served.clicked:
            rewards[source] += weight
    assert 0 < still_open < len(loop.served)
    assert loop.worker.stats.dead_lettered == 0
    assert rewards["popular"] == 0 and rewards["fresh"] > 0
    found = read_posteriors(loop.bandit, loop.store, SEGMENT, loop.now_s)
    assert {s: p.shown for s, p in found.items()} == pytest.approx(dict(shown), rel=1e-9)
    assert {s: p.rewards for s, p in found.items()} == pytest.approx(
        {s: rewards[s] for s in shown}, rel=1e-9, abs=1e-12
    )
    # Closed feeds leave no open record behind; the open ones are all still waiting.
    assert sum(loop.store.zcard(loop.keys.impressions(u)) for u in loop.users) == still_open


def test_logged_propensities_are_the_policys_probabilities(
    make_loop: Callable[..., Loop],
) -> None:
    """Against frozen live state (no worker in between), for each feed's first slot: the
    ordering's probabilities over the live sources sum to 1 and each is at least the
    explored floor's share; they are the blend's pick's source with 1 - explore_share plus
    explore_share times features.bandit.source_probabilities recomputed from the stored
    posteriors and the request's seeded generator; the impression on
    the bus logs the chosen source's probability; and over 600 requests each source leads as
    often as the logged probabilities say (within 4 sigma)."""
    loop = make_loop(seed=5, explore_share=0.5)  # a mixture far from degenerate
    loop.run(150, {"fresh": 0.09, "trending": 0.06, "covisitation": 0.04, "popular": 0.02})
    learning = loop.settings.learning
    posteriors = read_posteriors(loop.bandit, loop.store, SEGMENT, loop.now_s)
    results = [
        loop.service.feed(
            FeedRequest(
                user_id=loop.users[n % 7], k=K, now_s=loop.now_s, request_id=f"p{n}", device=DEVICE
            )
        )
        for n in range(600)
    ]
    decoded = (
        msgspec.json.decode(m.value, type=Impression)
        for m in loop.bus.read(loop.settings.topics.impressions)
    )
    logged = {imp.request_id: imp for imp in decoded if imp.request_id.startswith("p")}
    assert len(logged) == len(results)
    explore = loop.settings.funnel.explore_share
    floor = explore * learning.bandit_floor / len(SOURCES)
    leads: Counter[str] = Counter()
    expected: Counter[str] = Counter()
    for result in results:
        probs = result.trace.ordering["first_slot_probabilities"]
        assert set(probs) == set(SOURCES)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-9)
        assert min(probs.values()) >= floor - 1e-12
        again = source_probabilities(
            posteriors,
            list(probs),
            request_rng(loop.settings.funnel.seed, result.request.request_id),
            draws=learning.bandit_draws,
            floor=learning.bandit_floor,
            prior=loop.bandit.prior,
        )
        # The blend's pick takes 1 - explore, credited to its primary source; Thompson the rest.
        exploit = {s: p - explore * again[s] for s, p in probs.items()}
        primary = max(exploit, key=lambda s: exploit[s])
        assert exploit[primary] == pytest.approx(1.0 - explore, abs=1e-12)
        assert all(abs(v) < 1e-12 for s, v in exploit.items() if s != primary)
        impression = logged[result.request.request_id]
        assert impression.segment == SEGMENT
        assert impression.propensity_method == f"monte-carlo:{learning.bandit_draws}"
        first = impression.slots[0]
        assert (first.item_id, first.source) == (
            result.slots[0].candidate.item_id,
            result.slots[0].source,
        )
        assert first.propensity == pytest.approx(probs[first.source], abs=1e-12)
        assert all(floor - 1e-12 <= slot.propensity <= 1.0 for slot in impression.slots)
        leads[first.source] += 1
        for source, p in probs.items():
            expected[source] += p
    n = len(results)
    # The policy must not be degenerate, or the frequency check below says little.
    assert max(expected.values()) / n < 0.9, expected
    for source in SOURCES:
        p = expected[source] / n
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(leads[source] / n - p) < 4 * sigma + 0.005, (source, leads, expected)


def test_a_source_capped_out_of_the_feed_is_not_drawn_and_costs_no_slot() -> None:
    """Source A's five items share one category (cap: 2 per feed); source B has twenty items
    in twenty categories. Every 5-slot feed must be full, and once two of A's items are
    placed, B is the only source that can fill a slot: its logged propensity must be 1."""
    settings = FunnelSettings(max_per_category=2, exploration_slots=[])
    builder = SlateBuilder(settings, draws=256, floor=0.05)
    lengths: Counter[int] = Counter()
    after_cap: list[float] = []
    for n in range(200):
        candidates = [
            Candidate(f"a{i}", {"A": 1.0}, ItemMeta("X", f"ca{i}", 0, True), score=1.0 - i / 100)
            for i in range(5)
        ] + [
            Candidate(f"b{i}", {"B": 1.0}, ItemMeta(f"Y{i}", f"cb{i}", 0, True), score=0.5)
            for i in range(20)
        ]
        request = FeedRequest("u", 5, T0_S, f"r{n}")
        ctx = FeedContext(
            request, UserState(None, None, []), SEGMENT, request_rng(0, request.request_id)
        )
        slots = builder.build(ctx, candidates, 5, {}, Posterior(1.0, 20.0, 0.0, 0.0), None)
        lengths[len(slots)] += 1
        placed_x = 0
        for slot in slots:
            if placed_x >= 2:
                after_cap.append(slot.propensity)
            placed_x += slot.candidate.meta is not None and slot.candidate.meta.category == "X"
    assert after_cap, "the cap was never reached"
    assert lengths == {5: 200} and min(after_cap) == 1.0, (lengths, sorted(set(after_cap))[:5])
