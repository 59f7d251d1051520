"""The OpenAPI document describes what the API really answers: status, media type, body and
headers. The fuzzing (`tests/property/test_openapi_fuzz.py`) checks the answers a request can
provoke on a healthy system; these are the ones it cannot: a feed with its trace over a real
catalog, the access policy's refusals, a full producer buffer, an unreachable store and a
full dashboard hub."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from features.errors import StoreUnavailableError, TransportUnavailableError
from features.stores.memory_store import InMemoryStore
from serving.app import create_app
from serving.resources import Resources
from serving.settings import ServingSettings
from streamrec.settings import Settings
from streamrec.wiring import build_worker, embedded_resources
from streams.io.bus import InProcessBus
from streams.schema import Event
from streams.worker.runtime import Worker

CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
WRITE = "write-key-0123456789"
READ = "read-key-0123456789a"


class SwitchableStore(InMemoryStore):
    """An in-memory store that can be made unreachable: then every call raises as the Redis
    store's do, and ``ping`` answers False."""

    down = False

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name.startswith("_") or not callable(attr) or not super().__getattribute__("down"):
            return attr
        if name == "ping":
            return lambda: False

        def unreachable(*_: Any, **__: Any) -> Any:
            raise StoreUnavailableError("store unreachable (test)")

        return unreachable


class FullBuffer:
    """A Kafka producer whose buffer of ``capacity`` events never drains."""

    capacity = 4

    def send(self, event: Event) -> None:
        raise TransportUnavailableError("producer buffer full (test)")

    def send_many(self, events: Sequence[Event], wait_s: float) -> None:
        raise TransportUnavailableError(f"producer buffer full after {wait_s} s (test)")

    def flush(self, timeout_s: float = 10.0) -> int:
        return 0


class System:
    """The embedded app (in-process bus, a switchable in-memory store, a worker)."""

    def __init__(self, sink: FullBuffer | None = None, **serving: Any) -> None:
        defaults = Settings()
        self.settings = defaults.model_copy(
            update={"serving": ServingSettings(**{"dashboard_interval_s": 0.05, **serving})}
        )
        self.bus = InProcessBus(partitions=2, topics=self.settings.topics)
        self.store = SwitchableStore()
        topics = self.settings.topics.worker_inputs
        self.worker: Worker = build_worker(
            self.settings, self.bus.source(topics, "g"), self.store, self.bus
        )

        def resources() -> Resources:
            built = embedded_resources(self.settings, self.bus, self.store)
            if sink is not None:
                built.sink = sink
            return built

        self.app: FastAPI = create_app(self.settings.serving, resources)
        self.schema = schemathesis.openapi.from_dict(self.app.openapi())

    def drain(self) -> None:
        while self.worker.run_once():
            pass

    def assert_documented(self, response: httpx.Response) -> None:
        """``response`` is one the document gives for the operation its request called."""
        request = response.request
        for template in self.app.openapi()["paths"]:
            pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
            match = re.fullmatch(pattern, request.url.path)
            if match is not None:
                operation = self.schema[template][request.method]
                case = operation.Case(path_parameters=match.groupdict())
                case.validate_response(response, checks=CHECKS)
                return
        raise AssertionError(f"{request.url.path} is not in the document")


def now_ms() -> int:
    return int(time.time() * 1000)


def catalog() -> list[dict[str, Any]]:
    return [
        {"item_id": f"i{n}", "ts": now_ms(), "category": f"c{n % 3}", "creator": f"k{n % 4}"}
        for n in range(12)
    ]


def clicks(n: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"e{i}",
            "user_id": f"u{i % 4}",
            "item_id": f"i{i % 12}",
            "type": "click",
            "ts": now_ms(),
        }
        for i in range(n)
    ]


def wait_until(what: str, ready: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def live() -> Iterator[tuple[System, TestClient]]:
    """A running app over a catalog with clicks, its worker caught up."""
    system = System()
    with TestClient(system.app) as client:
        assert client.post("/items", json=catalog()).status_code == 202
        assert client.post("/events", json=clicks(40)).status_code == 202
        system.drain()
        replica = client.app.state.resources.replica  # type: ignore[attr-defined]
        wait_until("the index replica", lambda: replica.status()["items"] == 12)

        def healthy() -> bool:
            system.drain()  # a heartbeat: /health wants a live worker
            status: int = client.get("/health").status_code
            return status == 200

        wait_until("a healthy app", healthy)
        yield system, client


def test_a_real_feed_with_its_trace_is_the_documented_feed(
    live: tuple[System, TestClient],
) -> None:
    system, client = live
    for params in ({}, {"debug": "true", "device": "web", "k": "5"}):
        response = client.get("/feed/u1", params=params)
        assert response.status_code == 200 and response.json()["items"], response.text
        system.assert_documented(response)
    traced = client.get("/feed/u1", params={"debug": "true"}).json()["trace"]
    assert traced["scorer"]["model"] and traced["ordering"]["slots"] > 0
    similar = client.get("/similar/i0", params={"debug": "true"})
    assert similar.json()["items"]
    system.assert_documented(similar)


def test_catalog_dashboard_and_health_answers_are_documented(
    live: tuple[System, TestClient],
) -> None:
    system, client = live
    trending = client.get("/trending", params={"category": "c1"})
    assert trending.json()["items"]
    system.assert_documented(trending)
    for item, status in (("i3", 200), ("nope", 404)):
        response = client.get(f"/items/{item}")
        assert response.status_code == status
        system.assert_documented(response)
    user = client.get("/dashboard/user/u1")
    assert user.json()["recent"]
    system.assert_documented(user)
    wait_until(
        "a full snapshot", lambda: bool(client.get("/dashboard/history").json()["snapshots"])
    )
    system.assert_documented(client.get("/dashboard/history"))
    health = client.get("/health")
    assert health.status_code == 200
    system.assert_documented(health)
    system.assert_documented(client.get("/metrics"))


def test_answers_without_the_store_are_documented(live: tuple[System, TestClient]) -> None:
    system, client = live
    sampler = client.app.state.dashboard  # type: ignore[attr-defined]
    wait_until("a full snapshot", lambda: any("trending" in s for s in sampler.history))
    system.store.down = True
    feed = client.get("/feed/someone-new")
    assert feed.status_code == 200 and feed.json()["degraded"] is True
    system.assert_documented(feed)
    trending = client.get("/trending", params={"category": "c9"})
    shortest = system.settings.features.half_lives_s[0]
    assert trending.json() == {
        "window_s": shortest,
        "category": "c9",
        "degraded": True,
        "items": [],
    }
    system.assert_documented(trending)
    system.assert_documented(client.get("/similar/i0"))
    for path in ("/items/i3", "/dashboard/user/u1", "/health"):
        response = client.get(path)
        assert response.status_code == 503, path
        system.assert_documented(response)
    wait_until("a degraded snapshot", lambda: "degraded" in sampler.history[-1])
    system.assert_documented(client.get("/dashboard/history"))


def test_a_full_dashboard_is_a_documented_503(live: tuple[System, TestClient]) -> None:
    system, client = live
    client.app.state.dashboard.hub.max_subscribers = 0  # type: ignore[attr-defined]
    response = client.get("/dashboard/events")
    assert response.status_code == 503 and response.headers["Retry-After"]
    system.assert_documented(response)


def test_the_access_policy_refusals_are_documented() -> None:
    system = System(
        write_api_keys=[WRITE],
        read_api_keys=[READ],
        require_read_key=True,
        rate_limit_per_s=0.001,
        rate_limit_burst=3,
    )
    with TestClient(system.app) as client:
        # One client address, so its fourth request spends a burst of three.
        answers = [
            (401, client.get("/feed/u")),
            (401, client.post("/events", json=clicks(1))),
            (403, client.post("/items", json=catalog(), headers={"X-API-Key": READ})),
            (429, client.get("/metrics")),
        ]
    for status, response in answers:
        assert response.status_code == status, (response.request.url, response.text)
        system.assert_documented(response)
    assert answers[-1][1].headers["Retry-After"]


def test_refused_bodies_are_documented() -> None:
    system = System(sink=FullBuffer(), max_body_bytes=2048)
    with TestClient(system.app) as client:
        answers = [
            (400, client.post("/events", content=b"[]", headers={"content-length": "x"})),
            (413, client.post("/events", json=clicks(30))),  # over max_body_bytes
            (413, client.post("/items", json=catalog()[:5])),  # over the buffer's capacity
            (422, client.post("/events", json=[{"event_id": "e"}])),
            (503, client.post("/events", json=clicks(2))),
        ]
    for status, response in answers:
        assert response.status_code == status, (response.request.url, response.text)
        system.assert_documented(response)
    assert answers[-1][1].json()["accepted"] == 0


def test_an_answer_the_document_does_not_give_fails_the_check(
    live: tuple[System, TestClient],
) -> None:
    system, client = live
    real = client.get("/feed/u1")
    incomplete = {k: v for k, v in real.json().items() if k != "request_id"}

    def forged(status: int, body: Any, request: httpx.Request = real.request) -> httpx.Response:
        response = httpx.Response(status, json=body, request=request)
        response.elapsed = timedelta(0)
        return response

    item = httpx.Request("GET", "http://testserver/items/i3")
    metrics = httpx.Request("GET", "http://testserver/metrics")
    undocumented = [
        (forged(200, incomplete), "Response violates schema"),
        (forged(404, {"detail": [{"loc": ["path"], "msg": "x"}]}), "Undocumented status code"),
        (forged(503, {"detail": "no header"}, item), "Missing required response headers"),
        (forged(200, {"up": 1}, metrics), "Undocumented Content-Type"),
    ]
    for response, title in undocumented:
        with pytest.raises(FailureGroup) as failure:
            system.assert_documented(response)
        assert [f.title for f in failure.value.exceptions] == [title]


def test_the_spec_declares_a_key_only_where_the_configuration_requires_one() -> None:
    default = System().app.openapi()
    assert not any("security" in op for ops in default["paths"].values() for op in ops.values())
    assert "securitySchemes" not in default.get("components", {})
    keyed = System(write_api_keys=[WRITE]).app.openapi()
    assert "security" in keyed["paths"]["/events"]["post"]
    assert "security" not in keyed["paths"]["/feed/{user_id}"]["get"]  # reads stay open


def test_the_spec_states_the_running_limits(live: tuple[System, TestClient]) -> None:
    system, client = live
    spec = client.get("/openapi.json").json()
    k = next(p for p in spec["paths"]["/trending"]["get"]["parameters"] if p["name"] == "k")
    assert system.settings.serving.max_k in (
        k["schema"].get("maximum"),
        *(o.get("maximum") for o in k["schema"].get("anyOf", [])),
    )
    window = next(
        p for p in spec["paths"]["/trending"]["get"]["parameters"] if p["name"] == "window"
    )
    for name in window["schema"]["enum"]:  # every name the spec lists is accepted
        assert client.get("/trending", params={"window": name}).status_code == 200
    ts = spec["components"]["schemas"]["Interaction"]["properties"]["ts"]
    now = int(time.time() * 1000)
    assert now - 3_600_000 < ts["minimum"] < now < ts["maximum"] <= now + 5 * 60_000 + 5_000
    for bound in (ts["minimum"], ts["maximum"]):
        body = {"event_id": f"b{bound}", "user_id": "u", "item_id": "i", "type": "click"}
        assert client.post("/events", json={**body, "ts": bound}).status_code == 202
    embedding = spec["components"]["schemas"]["Item"]["properties"]["embedding"]["anyOf"][0]
    dim = system.settings.features.embedding_dim
    assert embedding["minItems"] == embedding["maxItems"] == dim


def test_an_integral_float_is_the_integer_json_schema_says_it_is(
    live: tuple[System, TestClient],
) -> None:
    _, client = live
    ts = float(int(time.time() * 1000))
    body = {"event_id": "f", "user_id": "u", "item_id": "i", "type": "click", "ts": ts}
    assert client.post("/events", json=body).status_code == 202
    refused = client.post("/events", json={**body, "ts": ts + 0.5})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "ts"]
    assert client.post("/events", json={**body, "ts": str(int(ts))}).status_code == 422


def test_docs_are_served_from_local_files_with_a_swagger_ui_that_renders_openapi_3_1(
    live: tuple[System, TestClient],
) -> None:
    _, client = live
    page = client.get("/docs")
    assert page.status_code == 200 and "cdn" not in page.text.lower()
    scripts = re.findall(r'src="([^"]+\.js)"', page.text)
    assert scripts and all(s.startswith("/") for s in scripts), scripts
    bundle = client.get(scripts[0])
    assert bundle.status_code == 200
    # Swagger UI 4 cannot render the OpenAPI 3.1 document FastAPI emits; 5 can.
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.\d+\.\d+"', bundle.text)
    assert version is not None and int(version.group(1)) >= 5, "not Swagger UI 5"
    assert client.app.openapi()["openapi"].startswith("3.1")  # type: ignore[attr-defined]
    assert client.get("/redoc").status_code == 200
