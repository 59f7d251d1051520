"""The HTTP API on the embedded bus and in-memory store (the same app as Kafka mode)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from features.batch import WriteBatch
from features.errors import StoreUnavailableError
from features.keys import Keys
from features.stores.memory_store import InMemoryStore
from serving.app import create_app
from streamrec.settings import Settings
from streamrec.wiring import build_worker, embedded_resources
from streams.io.bus import InProcessBus
from streams.worker.runtime import Worker


class System:
    """The embedded system: bus, in-memory store, a worker, and the app."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.bus = InProcessBus(partitions=2, topics=self.settings.topics)
        self.store = InMemoryStore()
        topics = self.settings.topics.worker_inputs
        self.worker: Worker = build_worker(
            self.settings, self.bus.source(topics, "g"), self.store, self.bus
        )
        self.app = create_app(
            self.settings.serving,
            lambda: embedded_resources(self.settings, self.bus, self.store),
        )

    def drain(self) -> None:
        while self.worker.run_once():
            pass


@pytest.fixture
def system() -> System:
    return System()


@pytest.fixture
def client(system: System) -> Iterator[TestClient]:
    with TestClient(system.app) as c:
        yield c


def now_ms() -> int:
    return int(time.time() * 1000)


def click(user: str, item: str, n: int = 0, kind: str = "click") -> dict[str, object]:
    return {
        "event_id": f"{user}-{item}-{n}",
        "user_id": user,
        "item_id": item,
        "type": kind,
        "ts": now_ms(),
    }


def test_posted_events_flow_into_the_feed(client: TestClient, system: System) -> None:
    batch = [click(f"u{n}", "hot", n) for n in range(5)] + [click("u9", "warm")]
    assert client.post("/events", json=batch).json() == {"accepted": 6}
    system.drain()
    feed = client.get("/feed/new-user", params={"k": 5}).json()
    assert [i["item_id"] for i in feed["items"]] == ["hot", "warm"]
    assert feed["degraded"] is False
    assert feed["items"][0]["score"] > feed["items"][1]["score"]


def test_the_feed_leaves_out_what_the_user_has_seen(client: TestClient, system: System) -> None:
    client.post("/events", json=[click("a", "x"), click("a", "y"), click("b", "x", 1)])
    system.drain()
    assert [i["item_id"] for i in client.get("/feed/a").json()["items"]] == []
    assert [i["item_id"] for i in client.get("/feed/c").json()["items"]] == ["x", "y"]


def test_deleted_items_leave_the_feed(client: TestClient, system: System) -> None:
    client.post("/events", json=[click("a", "x"), click("a", "y")])
    assert (
        client.post("/items", json={"item_id": "x", "ts": now_ms(), "op": "delete"}).status_code
        == 202
    )
    system.drain()
    assert [i["item_id"] for i in client.get("/feed/z").json()["items"]] == ["y"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"event_id": "e", "user_id": "u", "item_id": "i", "type": "click"}, ["body", "ts"]),
        (
            {"event_id": "e", "user_id": "u", "item_id": "i", "type": "poke", "ts": 1},
            ["body", "type"],
        ),
        (
            [{"event_id": "e", "user_id": 5, "item_id": "i", "type": "click", "ts": 1}],
            ["body", 0, "user_id"],
        ),
        (
            {"event_id": "e", "user_id": "u", "item_id": "i", "type": "click", "ts": 10**13},
            ["body", "ts"],
        ),
        # Older than the worker's allowed lateness by the wall clock: it would be dropped.
        (
            {"event_id": "e", "user_id": "u", "item_id": "i", "type": "click", "ts": 0},
            ["body", "ts"],
        ),
        (
            [
                {"event_id": "a", "user_id": "u", "item_id": "i", "type": "click", "ts": now_ms()},
                {
                    "event_id": "b",
                    "user_id": "u",
                    "item_id": "i",
                    "type": "click",
                    "ts": now_ms() - 2 * 3_600_000,
                },
            ],
            ["body", 1, "ts"],
        ),
    ],
)
def test_bad_events_get_422_naming_the_field(
    client: TestClient, system: System, body: object, loc: list[object]
) -> None:
    response = client.post("/events", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc
    assert system.bus.read(system.settings.topics.interactions) == []


def test_bad_item_embedding_names_the_field(client: TestClient) -> None:
    response = client.post("/items", json={"item_id": "i", "ts": 1, "embedding": [0.1, 0.2]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "embedding"]


def test_malformed_json_and_oversize_bodies(client: TestClient, system: System) -> None:
    response = client.post(
        "/events", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    big = b"[" + b",".join([b'"x"'] * 400_000) + b"]"
    assert client.post("/events", content=big).status_code == 413


def test_feed_parameters_are_validated(client: TestClient) -> None:
    assert client.get("/feed/u", params={"k": 0}).status_code == 422
    response = client.get("/feed/u", params={"k": 100_000})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "k"]


def test_the_feed_degrades_to_the_last_good_list_when_the_store_fails(
    client: TestClient, system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.post("/events", json=[click("a", "x")])
    system.drain()
    assert client.get("/feed/b").json()["items"][0]["item_id"] == "x"

    def down(*_: object, **__: object) -> object:
        raise StoreUnavailableError("redis unreachable (test)")

    monkeypatch.setattr(system.store, "top", down)
    response = client.get("/feed/b")
    assert response.status_code == 200
    assert response.json()["degraded"] is True
    assert [i["item_id"] for i in response.json()["items"]] == ["x"]


def test_health_reports_store_transport_and_workers(client: TestClient, system: System) -> None:
    response = client.get("/health")
    assert response.status_code == 503  # no worker has reported yet
    assert response.json()["consumers"]["ok"] is False
    system.worker.run_once()
    replica = client.app.state.resources.replica  # type: ignore[attr-defined]
    assert replica.ready.wait(10), "the index replica never caught up"
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["store"]["ok"] and body["transport"]["ok"]
    assert body["consumers"]["workers"][0]["alive"] is True


def test_health_skips_an_unreadable_heartbeat(client: TestClient, system: System) -> None:
    system.worker.run_once()
    batch = WriteBatch()
    batch.hset(Keys(system.settings.namespace).workers(), {"broken": "{not json"})
    system.store.commit(batch)
    response = client.get("/health")
    assert response.status_code in (200, 503)  # a 500 would be the bug
    workers = response.json()["consumers"]["workers"]
    assert workers and "broken" not in {w["id"] for w in workers}


def test_openapi_documents_the_event_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"Interaction", "Item", "Impression"} <= set(spec["components"]["schemas"])
    body = spec["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["oneOf"][0] == {"$ref": "#/components/schemas/Interaction"}
