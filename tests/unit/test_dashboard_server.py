"""The dashboard's server side: bounded fan-out, read-only endpoints, snapshot content."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from serving.dashboard.sampler import Hub
from serving.dashboard.snapshot import StreamRates, funnel_summary, slot_shares
from serving.metrics import FeedSample
from tests.unit.test_api import System, click


def test_a_browser_that_never_reads_costs_the_hub_nothing() -> None:
    async def scenario() -> tuple[int, int, float]:
        hub = Hub(queue_size=4)
        stuck = hub.subscribe()
        assert stuck is not None
        started = time.perf_counter()
        for n in range(1000):
            hub.publish(str(n).encode())
        await asyncio.sleep(0.05)  # let the queued offers run
        elapsed = time.perf_counter() - started
        newest = [stuck.get_nowait() for _ in range(stuck.qsize())]
        assert newest == [b"996", b"997", b"998", b"999"]  # the old ones were dropped
        return stuck.qsize(), hub.dropped, elapsed

    size, dropped, elapsed = asyncio.run(scenario())
    assert size == 0 and dropped == 996
    assert elapsed < 1.0


def test_the_hub_refuses_subscribers_beyond_its_bound() -> None:
    async def scenario() -> None:
        hub = Hub(max_subscribers=2)
        first, second = hub.subscribe(), hub.subscribe()
        assert first is not None and second is not None
        assert hub.subscribe() is None
        hub.unsubscribe(first)
        assert hub.subscribe() is not None and len(hub) == 2

    asyncio.run(scenario())


def sample(at: float, segment: str, sources: tuple[str, ...], total_ms: float) -> FeedSample:
    return FeedSample(
        at,
        total_ms / 1000,
        {"scoring": total_ms / 2},
        {"popular": 30},
        {"seen": 2},
        segment,
        sources,
    )


def test_funnel_and_share_summaries() -> None:
    samples = [
        sample(0.0, "new|web", ("popular", "fresh"), 2.0),
        sample(0.1, "new|web", ("popular", "popular"), 4.0),
    ]
    summary = funnel_summary(samples, window_s=2.0)
    assert summary["requests_per_s"] == 1.0
    assert summary["latency_ms"] == {"p50": 2.0, "p99": 4.0}
    assert summary["candidates"] == {"popular": 30.0} and summary["removed"] == {"seen": 2.0}
    assert slot_shares(samples) == {"new|web": {"fresh": 0.25, "popular": 0.75}}


def test_stream_rates_come_from_successive_heartbeats() -> None:
    rates = StreamRates()
    beat = {
        "by_type": {"click": 100},
        "lag": {"t/0": 3},
        "dead_lettered": 1,
        "freshness_ms": {"p50": 20.0, "p99": 80.0},
    }
    rates.update(10.0, [beat])
    later = rates.update(12.0, [{**beat, "by_type": {"click": 140, "view": 10}}])
    assert later["events_per_s"] == {"click": 20.0, "view": 5.0}
    assert later["lag_total"] == 3 and later["dead_lettered"] == 1
    assert later["freshness_ms"] == {"p50": 20.0, "p99": 80.0}


@pytest.fixture
def client() -> Iterator[tuple[TestClient, System]]:
    system = System()
    with TestClient(system.app) as c:
        yield c, system


def test_dashboard_endpoints_reject_writes(client: tuple[TestClient, System]) -> None:
    c, _ = client
    for path in ("/dashboard", "/dashboard/history", "/dashboard/events", "/dashboard/user/u1"):
        for method in ("post", "put", "delete", "patch"):
            assert getattr(c, method)(path).status_code == 405, (method, path)


def test_history_and_user_panel_show_live_state(client: tuple[TestClient, System]) -> None:
    c, system = client
    c.post("/events", json=[click("u1", "hot", n) for n in range(3)])
    system.drain()
    deadline = time.monotonic() + 5
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline and not rows:
        snapshots = c.get("/dashboard/history").json()["snapshots"]
        if snapshots and "trending" in snapshots[-1]:
            rows = snapshots[-1]["trending"]["lists"]["3600"]["global"]
        time.sleep(0.1)
    assert rows and rows[0]["item_id"] == "hot" and rows[0]["rank"] == 1
    body = c.get("/dashboard/user/u1").json()
    assert body["user_id"] == "u1" and [r["item_id"] for r in body["recent"]] == ["hot"]
    assert c.get("/").url.path == "/dashboard"
