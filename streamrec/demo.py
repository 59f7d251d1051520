"""The embedded default: simulator → in-process bus → worker → in-memory store → API, in one
process, with the same processors and API as the Kafka mode.

Besides the simulator's organic stream, simulated feed clients ask the real feed service
for feeds and click on them by a position-based click model over the simulator's ground
truth, sending the clicks back with the feed's ``request_id``: the worker joins them to the
logged impressions, so the bandit and the ranker learn while the demo runs.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
import uvicorn
from fastapi import FastAPI

from features.keys import Keys
from features.stores.memory_store import InMemoryStore
from serving.app import create_app
from serving.feed import FeedService
from serving.funnel.context import FeedRequest
from serving.funnel.funnel import FeedResult
from streamrec.settings import Settings
from streamrec.wiring import build_worker, embedded_resources
from streams.data.click_model import PositionBasedModel
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.io.bus import InProcessBus
from streams.schema import Event, Interaction
from streams.worker.embedding_refresh import EmbeddingRefresher, stream_time_ms

log = logging.getLogger(__name__)

#: A feed client's session ends after this long without a feed.
SESSION_GAP_S = 1_800.0
#: Seconds between two lines of the feed clients' figures in the log.
REPORT_EVERY_S = 60.0


@dataclass
class ClientStats:
    """What the feed clients did, and how good the feeds were against the ground truth."""

    feeds: int = 0
    clicks: int = 0
    events: int = 0
    expected_clicks: float = 0.0  # of the feeds as served
    best_expected_clicks: float = 0.0  # of the best slates from the live catalog

    def line(self) -> str:
        feeds = max(self.feeds, 1)
        return (
            f"feed clients: {self.feeds} feeds, {self.clicks / feeds:.2f} clicks per feed;"
            f" expected {self.expected_clicks / feeds:.2f} against"
            f" {self.best_expected_clicks / feeds:.2f} for the best slates"
        )


class FeedClients:
    """Simulated users asking for feeds and clicking on them, seeded.

    ``feed`` serves a request (the app's :meth:`FeedService.feed`, or None while the app
    is not serving); ``send`` puts events on the bus. Clicks are held until their event time,
    as a real client reaches the lower positions later.
    """

    def __init__(
        self,
        simulator: StreamSimulator,
        feed: Callable[[FeedRequest], FeedResult | None],
        send: Callable[[Event], None],
        *,
        k: int = 10,
        seed: int = 0,
    ) -> None:
        self.simulator = simulator
        self.feed = feed
        self.send = send
        self.k = k
        self.seed = seed
        self.rng = np.random.default_rng([seed, 7])
        self.clicks = PositionBasedModel(
            self._relevance, seed=seed, batch_relevance=self._relevances
        )
        self.stats = ClientStats()
        self._sessions: dict[str, tuple[str, float]] = {}  # user → (session id, last feed)
        self._pending: list[tuple[int, int, Interaction]] = []  # (ts, sequence, event)
        self._requests = 0
        self._sessions_opened = 0
        self._queued = 0  # tie-breaker of the pending heap

    def _relevance(self, user_id: str, item_id: str) -> float:
        return float(self._relevances(user_id, [item_id])[0])

    def _relevances(self, user_id: str, item_ids: Sequence[str]) -> np.ndarray:
        # Items the simulator never made (posted through the API) interest nobody.
        sim = self.simulator
        known = [i for i in item_ids if sim.knows_item(i)]
        if len(known) == len(item_ids):
            return sim.relevances(user_id, item_ids)
        found = dict(zip(known, sim.relevances(user_id, known), strict=True))
        return np.array([found.get(i, 0.0) for i in item_ids])

    def _session(self, user_id: str, now_s: float) -> str:
        session_id, last_s = self._sessions.get(user_id, ("", -SESSION_GAP_S))
        if now_s - last_s >= SESSION_GAP_S:
            self._sessions_opened += 1
            session_id = f"feeds{self.seed}-{self._sessions_opened}"
        self._sessions[user_id] = (session_id, now_s)
        return session_id

    def serve_one(self, now_s: float) -> list[Interaction]:
        """One user asks for a feed; their reactions are queued. Returns those reactions."""
        user = int(self.rng.integers(self.simulator.config.users))
        user_id = f"u{user}"
        device = "mobile" if user % 3 else "desktop"  # as the simulator's own events say
        self._requests += 1
        request = FeedRequest(
            user_id=user_id,
            k=self.k,
            now_s=now_s,
            request_id=f"feedsim{self.seed}-{self._requests}",
            device=device,
        )
        result = self.feed(request)
        if result is None or result.degraded or not result.slots:
            return []
        slate = [slot.candidate.item_id for slot in result.slots]
        events = self.clicks.respond(
            user_id,
            slate,
            request_id=request.request_id,
            ts_ms=int(now_s * 1000),
            session_id=self._session(user_id, now_s),
            context={"device": device},
            spacing_ms=500,
        )
        for event in events:
            self._queued += 1
            heapq.heappush(self._pending, (event.ts, self._queued, event))
        self._count(user_id, slate, events)
        return events

    def _count(self, user_id: str, slate: list[str], events: list[Interaction]) -> None:
        stats = self.stats
        stats.feeds += 1
        stats.clicks += sum(e.type == "click" for e in events)
        stats.events += len(events)
        stats.expected_clicks += self.clicks.expected_clicks(user_id, slate)
        stats.best_expected_clicks += self.clicks.best_expected_clicks(
            user_id, self.simulator.live_item_ids(), len(slate)
        )

    def send_due(self, now_s: float) -> int:
        """Send the queued reactions whose time has come; how many were sent."""
        sent = 0
        while self._pending and self._pending[0][0] <= now_s * 1000:
            self.send(heapq.heappop(self._pending)[2])
            sent += 1
        return sent

    def run(self, stop: threading.Event, rate: float) -> None:
        """About ``rate`` feeds per second until ``stop``."""
        next_report = time.monotonic() + REPORT_EVERY_S
        next_feed = time.monotonic()
        while not stop.wait(max(next_feed - time.monotonic(), 0.0)):
            # On a schedule, so the time a feed takes does not lower the rate; after a
            # stall the schedule restarts from now instead of catching up in a burst.
            next_feed = max(next_feed + 1.0 / rate, time.monotonic() - 1.0)
            now_s = time.time()
            try:
                self.serve_one(now_s)
            except Exception:  # noqa: BLE001 - one bad feed must not end the demo's clients
                log.exception("a simulated feed request failed")
            self.send_due(now_s)
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + REPORT_EVERY_S
                log.info("%s", self.stats.line())


@dataclass
class EmbeddedSystem:
    """Everything the demo runs, wired for one process."""

    settings: Settings
    seed: int = 42
    rate: float = 200.0
    # Simulated feed requests per second, each answered with clicks (0: none).
    feeds_per_s: float = 10.0
    bus: InProcessBus = field(init=False)
    store: InMemoryStore = field(init=False)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.bus = InProcessBus(
            partitions=self.settings.topics.partitions, topics=self.settings.topics
        )
        self.store = InMemoryStore()
        self.simulator = StreamSimulator(
            SimulatorConfig(
                embedding_dim=self.settings.features.embedding_dim,
                interval_s=1.0 / self.rate,
                # A living catalog and moving tastes, so the learners have something to follow.
                churn_probability=0.0002,
                taste_drift_period_s=1_800.0,
                category_shift_period_s=900.0,
            ),
            seed=self.seed,
        )
        self.worker = build_worker(
            self.settings,
            self.bus.source(
                self.settings.topics.worker_inputs,
                self.settings.worker.group_id,
            ),
            self.store,
            self.bus,
            worker_id="embedded",
        )
        # Item embeddings learned from co-visitation, for items that bring none of their own.
        self.refresher = EmbeddingRefresher(
            self.store,
            Keys(self.settings.namespace),
            self.settings.features,
            self.settings.learning,
            seed=self.seed,
        )
        self.clients = FeedClients(self.simulator, self._feed, self.bus.send, seed=self.seed)
        self._service: FeedService | None = None
        # Held around every client feed, so the app never closes the funnel mid-request.
        self._service_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def app(self) -> FastAPI:
        """The same API as `streamrec serve`, on the embedded bus and store."""
        api = create_app(
            self.settings.serving, lambda: embedded_resources(self.settings, self.bus, self.store)
        )
        serve = api.router.lifespan_context

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            async with serve(app):
                self._service = app.state.feed_service
                try:
                    yield
                finally:
                    # The feed clients stop asking before the funnel they call is closed.
                    with self._service_lock:
                        self._service = None

        api.router.lifespan_context = lifespan
        return api

    def _feed(self, request: FeedRequest) -> FeedResult | None:
        with self._service_lock:
            return self._service.feed(request) if self._service is not None else None

    def start(self) -> None:
        """Publish the catalog, then stream events, apply them and run the feed clients in
        background threads."""
        now_ms = int(time.time() * 1000)
        for item in self.simulator.initial_items(now_ms - 3_600_000):
            self.bus.send(item)
        targets: list[tuple[Callable[[threading.Event], None], str]] = [
            (self._stream, "simulator"),
            (self._work, "worker"),
        ]
        if self.feeds_per_s > 0:
            targets.append((lambda stop: self.clients.run(stop, self.feeds_per_s), "feeds"))
        for target, name in targets:
            thread = threading.Thread(target=target, args=(self.stop,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self, stop: threading.Event) -> None:
        """The worker's loop; between batches, learned item embeddings are refreshed by
        event time and their upserts put on the items topic, which the worker and the
        replica then apply like any other item event."""
        log.info("worker %s started", self.worker.worker_id)
        try:
            while not stop.is_set():
                if self.worker.run_once(stop):
                    self.refresh_embeddings()
        finally:
            self.worker.source.close()
            log.info("worker %s stopped: %s", self.worker.worker_id, self.worker.stats)

    def refresh_embeddings(self) -> int:
        """Refresh learned item embeddings if due at the stream's event time; the upserts
        sent."""
        now_ms = stream_time_ms(
            self.store, Keys(self.settings.namespace), self.settings.topics.interactions
        )
        applied = self.worker.stats.applied
        upserts = self.refresher.maybe_refresh(now_ms, applied) if now_ms is not None else []
        for item in upserts:
            self.bus.send(item)
        return len(upserts)

    def _stream(self, stop: threading.Event) -> None:
        tick_s = 0.1
        carry = 0.0
        while not stop.wait(tick_s):
            carry += self.rate * tick_s
            count, carry = int(carry), carry - int(carry)
            # The simulator is not thread-safe; the feed clients only read its ground truth.
            for event in self.simulator.events(count, start_ms=int(time.time() * 1000) - 100):
                self.bus.send(event)

    def close(self) -> None:
        """Stop the threads."""
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=10)


def run_demo(
    settings: Settings,
    *,
    seed: int,
    rate: float,
    duration_s: float | None,
    feeds_per_s: float = 10.0,
) -> None:
    """Run the embedded system and serve it until interrupted (or for ``duration_s``)."""
    if "attribution_window_s" not in settings.learning.model_fields_set:
        # Clicks teach the bandit once their window closes: half a minute keeps the
        # dashboard's bandit panel moving in a demo (production default: 5 minutes).
        learning = settings.learning.model_copy(update={"attribution_window_s": 30.0})
        settings = settings.model_copy(update={"learning": learning})
    system = EmbeddedSystem(settings, seed=seed, rate=rate, feeds_per_s=feeds_per_s)
    system.start()
    host, port = settings.serving.host, settings.serving.port
    log.info(
        "demo streaming %.0f events/s and %.0f simulated feeds/s (seed %d);"
        " live dashboard at http://%s:%d/",
        rate,
        feeds_per_s,
        seed,
        host,
        port,
    )
    server = uvicorn.Server(uvicorn.Config(system.app(), host=host, port=port, log_level="warning"))
    if duration_s is not None:
        threading.Timer(duration_s, lambda: setattr(server, "should_exit", True)).start()
    try:
        server.run()
    finally:
        system.close()
