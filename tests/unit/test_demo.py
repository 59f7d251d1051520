"""The embedded default, as a user runs it: one process, no Kafka, no Redis."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson
from fastapi.testclient import TestClient

from serving.funnel.context import Candidate, FeedRequest, Trace
from serving.funnel.funnel import FeedResult
from serving.funnel.ordering import Slot
from streamrec.demo import EmbeddedSystem, FeedClients
from streamrec.settings import Settings
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.schema import Event, Interaction
from tests.helpers import free_port, start, stop, wait_for


def test_demo_serves_a_feed_that_follows_the_stream() -> None:
    port = free_port()
    proc = start(
        ["demo", "--port", str(port), "--rate", "400", "--duration", "60"],
        # Point the Kafka/Redis settings at nothing: the demo must not need them.
        {
            "STREAMREC_KAFKA_BOOTSTRAP": "127.0.0.1:1",
            "STREAMREC_REDIS_URL": "redis://127.0.0.1:1/0",
        },
        "demo",
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def feed() -> list[dict[str, object]] | None:
            body = httpx.get(f"{base}/feed/u1", params={"k": 10}, timeout=5).json()
            assert body["degraded"] is False
            return body["items"] or None

        first = wait_for("a non-empty demo feed", feed)
        # Healthy once the worker reports and the index replica has caught up.
        wait_for(
            "the demo to report healthy",
            lambda: httpx.get(f"{base}/health", timeout=5).json()["status"] == "ok",
        )
        # The stream keeps flowing: the decayed scores move between two reads.
        second = wait_for("the feed to change", lambda: (f := feed()) != first and f)
        assert {i["item_id"] for i in second} and second != first
        assert proc.poll() is None
    finally:
        stop(proc)


def fake_feed(slate: list[str]) -> Callable[[FeedRequest], FeedResult]:
    def feed(request: FeedRequest) -> FeedResult:
        slots = [Slot(Candidate(item), "popular", 1.0) for item in slate]
        return FeedResult(request, slots, Trace(), "returning|mobile", "v1", [])

    return feed


def test_feed_clients_click_by_the_model_and_send_clicks_when_due() -> None:
    def run() -> tuple[list[Interaction], list[Event]]:
        sim = StreamSimulator(SimulatorConfig(users=20, items=40, embedding_dim=8), seed=1)
        sent: list[Event] = []
        clients = FeedClients(sim, fake_feed([f"i{n}" for n in range(10)]), sent.append, seed=3)
        reactions = [e for n in range(30) for e in clients.serve_one(1_000.0 + n)]
        # A reaction waits for its event time: the first comes half a second after its feed.
        assert clients.send_due(1_000.0) == 0 and not sent
        assert clients.send_due(1_000.0 + 30 + 60) == len(reactions)
        return reactions, sent

    reactions, sent = run()
    assert (reactions, sent) == run()  # seeded
    assert sorted(sent, key=lambda e: e.ts) == sent  # in event-time order
    assert any(e.type == "click" for e in reactions)
    assert all(e.request_id and e.request_id.startswith("feedsim3-") for e in reactions)


def test_the_embedded_demo_serves_simulated_feeds_and_gets_clicks_back() -> None:
    system = EmbeddedSystem(Settings(), seed=5, rate=300.0, feeds_per_s=20.0)
    topics = system.settings.topics
    system.start()
    try:
        with TestClient(system.app()):

            def clicked() -> set[str] | None:
                served = {
                    orjson.loads(m.value or b"{}")["request_id"]
                    for m in system.bus.read(topics.impressions)
                }
                clicks = [
                    orjson.loads(m.value or b"{}") for m in system.bus.read(topics.interactions)
                ]
                back = {
                    c["request_id"] for c in clicks if c["type"] == "click" and c.get("request_id")
                }
                # Every click names a feed that was served and logged.
                assert back <= served
                return back if len(back) >= 3 else None

            wait_for("clicks on simulated feeds", clicked, timeout_s=60)
            assert system.clients.stats.feeds > 0
            assert system.clients.stats.best_expected_clicks >= system.clients.stats.expected_clicks
    finally:
        system.close()
    assert not any(t.is_alive() for t in system._threads)
