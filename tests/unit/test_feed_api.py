"""The feed, similar-items, trending, item and metrics routes over the embedded system: the
in-process bus, the in-memory store, the real worker and the same app as Kafka mode."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from fastapi.testclient import TestClient

from features.stores.memory_store import InMemoryStore
from serving.app import create_app
from serving.funnel.scoring import feature_names
from serving.funnel.settings import FunnelSettings
from serving.resources import Resources
from streamrec.settings import Settings
from streamrec.wiring import build_worker, embedded_resources
from streams.io.bus import InProcessBus
from streams.schema import Impression
from streams.worker.runtime import Worker

CATEGORIES = ("news", "sport", "music")
PER_CATEGORY = 12
#: Items 0..7 of each category get background clicks; 8..11 are never interacted with.
CLICKED = 8
STAGES = ("user_state", "retrieval", "filtering", "scoring", "ordering")


def funnel_settings(**overrides: Any) -> FunnelSettings:
    """The default funnel, with source budgets generous enough that a busy test machine
    never cuts a source off (budgets have their own tests)."""
    defaults = FunnelSettings()
    sources = {
        name: cfg.model_copy(update={"budget_ms": 2000.0}) for name, cfg in defaults.sources.items()
    }
    return FunnelSettings(**{"sources": sources, **overrides})


class System:
    def __init__(self, funnel: FunnelSettings | None = None) -> None:
        self.settings = Settings(funnel=funnel or funnel_settings())
        self.bus = InProcessBus(partitions=2, topics=self.settings.topics)
        self.store = InMemoryStore()
        topics = self.settings.topics.worker_inputs
        self.worker: Worker = build_worker(
            self.settings, self.bus.source(topics, "g"), self.store, self.bus
        )
        self.resources: Resources | None = None
        self.app = create_app(self.settings.serving, self._resources)

    def _resources(self) -> Resources:
        resources = embedded_resources(self.settings, self.bus, self.store)
        # The replica follows the items topic on its own thread; stop it and apply the topic
        # in `sync` instead, so a test never has to wait for it.
        assert resources.replica is not None
        resources.replica.stop()
        self.resources = resources
        return resources

    def sync(self) -> None:
        """Apply everything produced so far: the worker's state and the serving replica."""
        while self.worker.run_once():
            pass
        assert self.resources is not None and self.resources.replica is not None
        self.resources.replica.apply(self.bus.read(self.settings.topics.items))

    def impressions(self) -> list[Impression]:
        return [
            msgspec.json.decode(m.value, type=Impression)
            for m in self.bus.read(self.settings.topics.impressions)
            if m.value is not None
        ]


def now_ms() -> int:
    return int(time.time() * 1000)


def catalog(ts: int, creator: str | None = None) -> list[dict[str, Any]]:
    return [
        {
            "item_id": f"{category}{n}",
            "ts": ts,
            "created_at": ts - (PER_CATEGORY - n) * 60_000,  # higher n: newer
            "category": category,
            "creator": creator or f"{category}-creator{n}",
            "tags": [f"{category}-topic"],
            "title": f"{category} story {n}",
        }
        for category in CATEGORIES
        for n in range(PER_CATEGORY)
    ]


def click(user: str, item: str, ts: int, kind: str = "click") -> dict[str, Any]:
    return {
        "event_id": f"{user}-{item}-{kind}",
        "user_id": user,
        "item_id": item,
        "type": kind,
        "ts": ts,
    }


def background_clicks(ts: int) -> list[dict[str, Any]]:
    """Every category equally popular: items 0..7 of each get two to four clicks."""
    return [
        click(f"bg{u}", f"{category}{n}", ts)
        for category in CATEGORIES
        for n in range(CLICKED)
        for u in range(2 + n % 3)
    ]


def populate(client: TestClient, system: System) -> None:
    ts = now_ms()
    assert client.post("/items", json=catalog(ts)).status_code == 202
    assert client.post("/events", json=background_clicks(ts)).status_code == 202
    system.sync()


@pytest.fixture
def system() -> System:
    return System()


@pytest.fixture
def client(system: System) -> Iterator[TestClient]:
    with TestClient(system.app) as c:
        yield c


@pytest.fixture
def live(client: TestClient, system: System) -> TestClient:
    """A client over a populated catalog."""
    populate(client, system)
    return client


def feed(client: TestClient, user: str, **params: Any) -> dict[str, Any]:
    response = client.get(f"/feed/{user}", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def category_of(item_id: str) -> str:
    return item_id.rstrip("0123456789")


# --- /feed -----------------------------------------------------------------------------------


def test_a_cold_user_gets_a_feed_mixed_from_the_global_sources(live: TestClient) -> None:
    body = feed(live, "newcomer", request_id="cold-1")
    items = body["items"]
    assert len(items) == live.app.state.settings.default_k  # type: ignore[attr-defined]
    assert body["segment"] == "new|other" and body["degraded"] is False
    ids = [i["item_id"] for i in items]
    assert len(ids) == len(set(ids))
    for i in items:
        assert 0.0 < i["propensity"] <= 1.0
        assert i["sources"] and set(i["sources"]) <= {"trending", "popular", "fresh"}
        assert i["source"] in i["sources"] or i["source"] == "explore"
    bandit_sources = {i["source"] for i in items} - {"explore"}
    assert bandit_sources <= {"trending", "popular", "fresh"}
    assert len(bandit_sources) >= 2
    assert {s for i in items for s in i["sources"]} == {"trending", "popular", "fresh"}


def test_clicks_in_a_category_raise_its_share_of_the_feed(live: TestClient, system: System) -> None:
    ts = now_ms()
    fan = [click("fan", f"news{n}", ts + n) for n in range(4)]
    assert live.post("/events", json=fan).status_code == 202
    system.sync()

    def news_share(user: str) -> float:
        items = feed(live, user, k=10, request_id="share-1")["items"]
        assert len(items) == 10
        return sum(category_of(i["item_id"]) == "news" for i in items) / len(items)

    cold, warm = news_share("stranger"), news_share("fan")
    assert warm > cold
    assert warm >= 0.5
    fan_feed = feed(live, "fan", request_id="share-2")
    assert not {f"news{n}" for n in range(4)} & {i["item_id"] for i in fan_feed["items"]}
    assert fan_feed["segment"] == "returning|other"


def test_debug_returns_the_trace_of_every_stage(live: TestClient) -> None:
    body = feed(live, "newcomer", debug="true")
    trace = body["trace"]
    assert set(STAGES) <= set(trace["stages_ms"])
    assert all(trace["stages_ms"][s] >= 0.0 for s in STAGES)
    enabled = set(FunnelSettings().sources)
    assert set(trace["sources"]) == enabled
    # Trending and popular know the clicked items; fresh knows every available item; each
    # returns at most its configured k.
    clicked, everything = len(CATEGORIES) * CLICKED, len(CATEGORIES) * PER_CATEGORY
    k = {name: cfg.k for name, cfg in FunnelSettings().sources.items()}
    assert trace["sources"]["trending"]["candidates"] == min(clicked, k["trending"])
    assert trace["sources"]["popular"]["candidates"] == min(clicked, k["popular"])
    assert trace["sources"]["fresh"]["candidates"] == min(everything, k["fresh"])
    for name in ("session_ann", "user_ann", "covisitation"):  # a cold user has no history
        assert trace["sources"][name]["candidates"] == 0
    assert {"seen", "unavailable", "request_categories", "blocked_creators"} <= set(
        trace["filters_removed"]
    )
    assert trace["scorer"]["model"] == "heuristic"
    assert trace["ordering"]["slots"] == len(body["items"])
    assert "trace" not in feed(live, "newcomer")


def test_filters_removed_counts_what_the_user_has_seen(live: TestClient, system: System) -> None:
    ts = now_ms()
    live.post("/events", json=[click("reader", f"sport{n}", ts + n) for n in range(3)])
    system.sync()
    trace = feed(live, "reader", debug="true", category="sport")["trace"]
    assert trace["filters_removed"]["seen"] == 3
    assert trace["filters_removed"]["request_categories"] > 0


def test_request_categories_and_exclusions_shape_the_feed(live: TestClient) -> None:
    only = feed(live, "newcomer", category=["music"], k=8)["items"]
    assert only and {category_of(i["item_id"]) for i in only} == {"music"}
    without = feed(live, "newcomer", exclude_category=["music", "news"], k=8)["items"]
    assert without and {category_of(i["item_id"]) for i in without} == {"sport"}


def test_each_feed_is_logged_as_one_impression_with_its_request_id(
    live: TestClient, system: System
) -> None:
    body = feed(live, "newcomer", request_id="client-chosen-id", k=7, device="mobile")
    assert body["request_id"] == "client-chosen-id"
    assert body["segment"] == "new|mobile"
    (impression,) = system.impressions()
    assert impression.request_id == "client-chosen-id"
    assert impression.user_id == "newcomer"
    assert impression.segment == "new|mobile"
    assert impression.policy_version == body["policy_version"]
    names = feature_names(list(FunnelSettings().sources))
    assert impression.feature_names == names
    served = body["items"]
    assert [s.item_id for s in impression.slots] == [i["item_id"] for i in served]
    assert [s.position for s in impression.slots] == list(range(len(served)))
    assert [s.source for s in impression.slots] == [i["source"] for i in served]
    assert [s.propensity for s in impression.slots] == [i["propensity"] for i in served]
    for slot in impression.slots:
        assert slot.features is not None and len(slot.features) == len(names)

    second = feed(live, "newcomer")
    ids = [i.request_id for i in system.impressions()]
    assert ids == ["client-chosen-id", second["request_id"]]
    assert second["request_id"] != "client-chosen-id"


def test_an_empty_feed_logs_no_impression(client: TestClient, system: System) -> None:
    assert feed(client, "anyone")["items"] == []
    assert system.impressions() == []


# --- /similar --------------------------------------------------------------------------------


def test_similar_items_leave_out_the_item_and_put_its_category_first(live: TestClient) -> None:
    # news11 has no clicks: its neighbours come from its content embedding alone.
    body = live.get("/similar/news11", params={"k": 5}).json()
    assert body["item_id"] == "news11"
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 5 and "news11" not in ids
    assert {category_of(i) for i in ids} == {"news"}
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(i["source"] == "similar_item" for i in body["items"])


def test_similar_items_leave_out_deleted_items(live: TestClient, system: System) -> None:
    before = [i["item_id"] for i in live.get("/similar/news11", params={"k": 3}).json()["items"]]
    deleted = before[0]
    live.post("/items", json={"item_id": deleted, "ts": now_ms(), "op": "delete"})
    system.sync()
    after = [i["item_id"] for i in live.get("/similar/news11", params={"k": 3}).json()["items"]]
    assert deleted not in after and len(after) == 3


def test_similar_items_of_an_unknown_item_are_a_404_as_the_item_is(live: TestClient) -> None:
    for path in ("/similar/no-such-item", "/items/no-such-item"):
        response = live.get(path)
        assert response.status_code == 404
        assert response.json()["detail"][0]["loc"] == ["path", "item_id"]


@pytest.mark.parametrize("path", ["/feed/%00", "/feed/a%0A", "/similar/a%0Ab", "/items/%7F"])
def test_path_ids_follow_the_event_schemas_id_rules(live: TestClient, path: str) -> None:
    response = live.get(path)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "path"


def test_similar_items_never_show_a_blocked_creator() -> None:
    system = System(funnel_settings(blocked_creators=["spammer"]))
    with TestClient(system.app) as client:
        ts = now_ms()
        spam = {"item_id": "spam1", "ts": ts, "category": "news", "creator": "spammer"}
        spam |= {"tags": ["news-topic"], "title": "news story spam"}
        client.post("/items", json=[*catalog(ts), spam])
        client.post("/events", json=background_clicks(ts))
        system.sync()
        assert "spam1" not in {i["item_id"] for i in feed(client, "u", k=50)["items"]}
        similar = client.get("/similar/news11", params={"k": 20}).json()["items"]
        assert "spam1" not in {i["item_id"] for i in similar}


# --- /trending -------------------------------------------------------------------------------


def test_trending_defaults_to_the_shortest_window(live: TestClient) -> None:
    body = live.get("/trending").json()
    assert body["window_s"] == 3600.0 and body["degraded"] is False
    items = body["items"]
    assert len(items) == live.app.state.settings.default_k  # type: ignore[attr-defined]
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    # Items clicked 4 times (n % 3 == 2) lead; nothing unclicked trends.
    top = {i["item_id"] for i in items[:6]}
    assert top == {f"{c}{n}" for c in CATEGORIES for n in (2, 5)}
    assert all(int(i["item_id"][len(category_of(i["item_id"])) :]) < CLICKED for i in items)


@pytest.mark.parametrize(
    ("window", "seconds"), [("24h", 86400.0), ("86400", 86400.0), ("1h", 3600.0)]
)
def test_trending_windows_name_a_configured_half_life(
    live: TestClient, window: str, seconds: float
) -> None:
    body = live.get("/trending", params={"window": window, "k": 5}).json()
    assert body["window_s"] == seconds
    assert len(body["items"]) == 5


@pytest.mark.parametrize("window", ["bogus", "2h", "", "h", "nan", "-1h"])
def test_an_unknown_trending_window_is_a_422_naming_window(live: TestClient, window: str) -> None:
    response = live.get("/trending", params={"window": window})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "window"]


def test_trending_in_one_category_and_the_rising_flag(live: TestClient) -> None:
    body = live.get("/trending", params={"category": "sport", "k": 50}).json()
    assert body["category"] == "sport"
    ids = [i["item_id"] for i in body["items"]]
    assert sorted(ids) == sorted(f"sport{n}" for n in range(CLICKED))
    assert all(isinstance(i["rising"], bool) for i in body["items"])
    # Every click is minutes old: the hourly rate far outruns the daily one.
    assert all(i["rising"] and i["rise"] > 1.0 for i in body["items"])
    assert live.get("/trending", params={"category": "nothing-here"}).json()["items"] == []


def test_trending_refuses_k_above_the_maximum(live: TestClient) -> None:
    max_k = live.app.state.settings.max_k  # type: ignore[attr-defined]
    response = live.get("/trending", params={"k": max_k + 1})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "k"]
    assert live.get("/trending", params={"k": max_k}).status_code == 200


# --- /items ----------------------------------------------------------------------------------


def test_an_item_shows_its_catalog_record_and_availability(
    live: TestClient, system: System
) -> None:
    body = live.get("/items/sport3").json()
    assert (body["category"], body["creator"], body["available"]) == (
        "sport",
        "sport-creator3",
        True,
    )
    assert body["in_index"] is True
    assert body["popularity"]["all_time"] == 2.0 * (2 + 3 % 3)
    deleted_at = now_ms()
    live.post("/items", json={"item_id": "sport3", "ts": deleted_at, "op": "delete"})
    system.sync()
    gone = live.get("/items/sport3")
    assert gone.status_code == 404
    assert gone.json()["deleted_at"] == deleted_at
    assert gone.json()["detail"][0]["loc"] == ["path", "item_id"]
    # Unavailable but not deleted: still the record, with its creation time.
    created = now_ms()
    live.post(
        "/items", json={"item_id": "paused", "ts": created, "category": "news", "available": False}
    )
    system.sync()
    paused = live.get("/items/paused").json()
    assert (paused["available"], paused["created_at"]) == (False, created)


def test_an_unknown_item_is_a_404_naming_item_id(live: TestClient) -> None:
    response = live.get("/items/never-announced")
    assert response.status_code == 404
    assert response.json()["detail"][0]["loc"] == ["path", "item_id"]


# --- /metrics --------------------------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition text (labels in any order)."""
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return None


def test_metrics_show_stage_latency_and_candidates_per_source(live: TestClient) -> None:
    before = live.get("/metrics").text
    assert metric(before, "streamrec_source_candidates_total", source="trending") is None
    trace = feed(live, "newcomer", debug="true")["trace"]
    response = live.get("/metrics")
    assert response.status_code == 200
    text = response.text
    for stage in STAGES:
        assert metric(text, "streamrec_feed_stage_seconds_count", stage=stage) == 1.0
    assert metric(text, "streamrec_feed_stage_seconds_count", stage="total") is None
    for source, info in trace["sources"].items():
        counted = metric(text, "streamrec_source_candidates_total", source=source)
        assert counted == float(info["candidates"])
    assert metric(text, "streamrec_feeds_total", segment="new|other", degraded="false") == 1.0
    slots = Counter(i["source"] for i in feed(live, "newcomer", request_id="m2")["items"])
    text = live.get("/metrics").text
    for source, count in slots.items():
        assert (
            metric(text, "streamrec_slots_total", segment="new|other", source=source) or 0
        ) >= count


# --- bad requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "params", "field"),
    [
        ("/feed/u", {"k": 0}, "k"),
        ("/feed/u", {"k": "abc"}, "k"),
        ("/feed/u", {"k": -3}, "k"),
        ("/feed/u", {"k": 10**6}, "k"),
        ("/feed/u", {"debug": "maybe"}, "debug"),
        ("/feed/u", {"request_id": ""}, "request_id"),
        ("/feed/u", {"device": "x" * 65}, "device"),
        ("/feed/u", {"category": ""}, "category"),
        ("/similar/i", {"k": 0}, "k"),
        ("/similar/i", {"k": "abc"}, "k"),
        ("/similar/i", {"k": 10**6}, "k"),
        ("/trending", {"k": 0}, "k"),
        ("/trending", {"k": "many"}, "k"),
    ],
)
def test_bad_query_parameters_are_a_422_naming_the_field(
    client: TestClient, url: str, params: dict[str, Any], field: str
) -> None:
    response = client.get(url, params=params)
    assert response.status_code == 422, response.text
    locs = [d["loc"] for d in response.json()["detail"]]
    assert any(loc[:2] == ["query", field] for loc in locs), locs


@pytest.mark.parametrize(
    "url",
    [
        "/feed/%20",
        "/feed/a:b{c}",
        "/feed/u?category=unknown-category",
        "/feed/u?exclude_category=news&exclude_category=sport&exclude_category=music",
        "/feed/u?device=smart-fridge",
        "/similar/%7Bsr%7D",
        "/trending?category=%7Bsr%7D&window=24h",
        "/items/a:b",
    ],
)
def test_odd_but_valid_requests_never_fail_the_server(live: TestClient, url: str) -> None:
    response = live.get(url)
    assert response.status_code in (200, 404), response.text
