"""The HTTP side of the threat model, on the embedded app: API keys, rate limits, CORS, body
limits, a read-only dashboard; and the transport options reaching Kafka and Redis clients."""

from __future__ import annotations

import asyncio
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.requests import Request

import serving.security as security
from features.stores.memory_store import InMemoryStore
from features.stores.redis_store import RedisStore
from serving.app import create_app
from serving.security import (
    AccessPolicy,
    BodyTooLargeError,
    KeyRing,
    RateLimiter,
    constant_time_in,
    read_body,
)
from serving.settings import ServingSettings
from streamrec.settings import Settings
from streamrec.wiring import embedded_resources, kafka_worker
from streams.io import kafka as kafka_io
from streams.io.bus import InProcessBus
from streams.io.producer import EventProducer

WRITE = "write-key-0123456789"
READ = "read-key-0123456789a"
OTHER = "not-a-key-0123456789"


class Api:
    """The embedded app with the given serving settings, and the bus it produces to."""

    def __init__(self, **serving: Any) -> None:
        self.settings = Settings().model_copy(update={"serving": ServingSettings(**serving)})
        self.bus = InProcessBus(partitions=2, topics=self.settings.topics)
        self.store = InMemoryStore()
        self.app: FastAPI = create_app(
            self.settings.serving,
            lambda: embedded_resources(self.settings, self.bus, self.store),
        )

    def client(self, address: str = "testclient") -> TestClient:
        return TestClient(self.app, client=(address, 50000))

    def produced(self) -> int:
        return len(self.bus.read(self.settings.topics.interactions))


def click(n: int = 0) -> dict[str, object]:
    now_ms = int(time.time() * 1000)
    return {"event_id": f"e{n}", "user_id": "u", "item_id": "i", "type": "click", "ts": now_ms}


def key(value: str) -> dict[str, str]:
    return {"X-API-Key": value}


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def names_the_key_header(response: Any) -> bool:
    detail = response.json()["detail"]
    return bool(detail[0]["loc"] == ["header", "X-API-Key"] and detail[0]["msg"])


@pytest.fixture
def keyed() -> Iterator[tuple[Api, TestClient]]:
    api = Api(write_api_keys=[WRITE], read_api_keys=[READ])
    with api.client() as c:
        yield api, c


# ---------------------------------------------------------------- write keys


def test_writes_need_a_write_key_in_either_header(keyed: tuple[Api, TestClient]) -> None:
    api, c = keyed
    missing = c.post("/events", json=click())
    assert missing.status_code == 401 and names_the_key_header(missing)
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    for wrong in (key(OTHER), bearer(OTHER), key(READ), {"Authorization": f"Basic {WRITE}"}):
        response = c.post("/events", json=click(), headers=wrong)
        assert response.status_code in (401, 403) and names_the_key_header(response), wrong
    assert c.post("/events", json=click(), headers=key(OTHER)).status_code == 403
    assert api.produced() == 0
    assert c.post("/events", json=click(1), headers=key(WRITE)).status_code == 202
    assert c.post("/events", json=click(2), headers=bearer(WRITE)).status_code == 202
    assert api.produced() == 2
    item = {"item_id": "i", "ts": 1, "op": "delete"}
    assert c.post("/items", json=item).status_code == 401
    assert c.post("/items", json=item, headers=key(WRITE)).status_code == 202


def test_the_key_is_checked_before_the_body_is_read(keyed: tuple[Api, TestClient]) -> None:
    _, c = keyed
    big = b"x" * (2 * 1024 * 1024)
    assert c.post("/events", content=big).status_code == 401
    assert c.post("/events", content=b"{oops", headers=key(OTHER)).status_code == 403


@pytest.mark.parametrize(
    ("host", "mode", "status"),
    [
        ("127.0.0.1", "loopback", 202),  # streamrec demo and serve on their default bind
        ("0.0.0.0", "loopback", 401),  # noqa: S104 - reachable from other machines
        ("127.0.0.1", "never", 401),
        ("0.0.0.0", "always", 202),  # noqa: S104 - a trusted network, said so in config
    ],
)
def test_without_write_keys_anonymous_writes_follow_the_bind(
    host: str, mode: str, status: int
) -> None:
    api = Api(host=host, unauthenticated_writes=mode)
    with api.client() as c:
        assert c.post("/events", json=click()).status_code == status
        # With no key configured there is nothing to match a given key against.
        assert c.post("/events", json=click(), headers=key(OTHER)).status_code == (
            202 if status == 202 else 403
        )


def test_start_up_logs_one_line_on_how_writes_are_authenticated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="serving.app")
    with Api(host="0.0.0.0").client():  # noqa: S104
        pass
    lines = [r for r in caplog.records if r.name == "serving.app"]
    assert len(lines) == 1 and lines[0].levelname == "WARNING"
    assert "refuse every write" in lines[0].getMessage()
    assert "STREAMREC_SERVING__WRITE_API_KEYS" in lines[0].getMessage()


# ---------------------------------------------------------------- constant time


def test_key_ring_matches_exactly_and_compares_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [f"key-number-{n:08d}" for n in range(5)]
    ring = KeyRing.of(keys)
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    for presented in (keys[0], keys[4], "key-number-0000000", "nope"):
        calls.clear()
        ring.match(presented)
        assert len(calls) == len(keys), presented  # no early exit on the first key
    assert ring.match(keys[0]) is not None and ring.match(keys[0]) != ring.match(keys[1])
    assert keys[0] not in str(ring.match(keys[0]))  # a bucket name, not the key
    assert ring.match("") is None and ring.match(keys[0] + " ") is None
    assert constant_time_in("é-ünïcode-key-0001", ["é-ünïcode-key-0001"])
    assert not constant_time_in("anything", [])


# ---------------------------------------------------------------- read keys


def test_reads_are_open_by_default_and_health_always() -> None:
    with Api(write_api_keys=[WRITE]).client() as c:
        assert c.get("/feed/u").status_code == 200
        assert c.get("/trending").status_code == 200
        assert c.get("/metrics").status_code == 200
        # A key given must be right even where none is needed.
        assert c.get("/feed/u", headers=key(OTHER)).status_code == 403
        assert c.get("/feed/u", headers=key(WRITE)).status_code == 200


def guarded_reads(app: FastAPI) -> list[str]:
    """Every GET path of the app but health, path parameters filled: those in its OpenAPI
    document and the dashboard's pages, which leave themselves out of it."""
    hidden = ["/", "/dashboard", "/dashboard/static/dashboard.js"]
    spec = app.openapi()
    documented = [path for path, ops in spec["paths"].items() if "get" in ops]
    paths = [p for p in documented if p != "/health"] + hidden
    return [p.replace("{", "").replace("}", "") for p in paths]


def test_with_require_read_key_every_read_but_health_needs_a_key() -> None:
    api = Api(write_api_keys=[WRITE], read_api_keys=[READ], require_read_key=True)
    paths = guarded_reads(api.app)
    assert {"/feed/user_id", "/similar/item_id", "/trending", "/items/item_id"} <= set(paths)
    assert {"/metrics", "/dashboard", "/dashboard/history", "/dashboard/events"} <= set(paths)
    with api.client() as c:
        for path in paths:
            response = c.get(path)
            assert response.status_code == 401 and names_the_key_header(response), path
            assert c.get(path, headers=key(OTHER)).status_code == 403, path
        for path in ("/feed/u", "/trending", "/metrics", "/dashboard/history"):
            assert c.get(path, headers=key(READ)).status_code == 200, path
            assert c.get(path, headers=bearer(WRITE)).status_code == 200, path  # writers read
        assert c.get("/health").status_code in (200, 503)  # never 401: load balancers
        assert c.get("/openapi.json").status_code == 200
        assert c.post("/events", json=click(), headers=key(READ)).status_code == 403


def test_openapi_documents_both_key_headers() -> None:
    with Api(write_api_keys=[WRITE]).client() as c:
        spec = c.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"apiKey", "http"}
    assert any(s.get("name") == "X-API-Key" for s in schemes.values())
    assert len(spec["paths"]["/events"]["post"]["security"]) == 2  # either one
    assert "security" not in spec["paths"]["/health"]["get"]


# ---------------------------------------------------------------- rate limits


def test_a_key_over_its_burst_gets_429_with_retry_after_then_refills() -> None:
    api = Api(write_api_keys=[WRITE], rate_limit_per_s=0.5, rate_limit_burst=2)
    now = [1000.0]
    api.app.state.access.limiter.clock = lambda: now[0]
    with api.client() as c:
        assert [c.get("/trending", headers=key(WRITE)).status_code for _ in range(2)] == [200] * 2
        limited = c.get("/trending", headers=key(WRITE))
        assert limited.status_code == 429 and names_the_key_header(limited)
        assert limited.headers["Retry-After"] == "2"  # one token at 0.5/s
        assert c.post("/events", json=click(), headers=key(WRITE)).status_code == 429
        # Anonymous callers have their address's bucket, not the key's.
        assert c.get("/trending").status_code == 200
        now[0] += 1.0
        assert c.get("/trending", headers=key(WRITE)).status_code == 429
        assert c.get("/trending", headers=key(WRITE)).headers["Retry-After"] == "1"
        now[0] += 1.0
        assert c.post("/events", json=click(), headers=key(WRITE)).status_code == 202
        assert c.get("/health").status_code in (200, 503)  # never limited


def test_anonymous_callers_are_limited_per_address() -> None:
    api = Api(rate_limit_per_s=0.001, rate_limit_burst=3)
    with api.client("10.0.0.1") as first, api.client("10.0.0.2") as second:
        assert [first.get("/trending").status_code for _ in range(4)] == [200, 200, 200, 429]
        assert second.get("/trending").status_code == 200
        assert second.get("/trending", headers=key(OTHER)).status_code == 200  # no keys set
    # Wrong keys are charged to the address: guessing spends the guesser's own budget.
    keyed = Api(write_api_keys=[WRITE], rate_limit_per_s=0.001, rate_limit_burst=2)
    with keyed.client("10.0.0.3") as guesser:
        codes = [guesser.get("/feed/u", headers=key(f"{OTHER}{n}")).status_code for n in range(3)]
        assert codes == [403, 403, 429]
        assert guesser.get("/feed/u", headers=key(WRITE)).status_code == 200  # its own bucket


def test_the_limiter_keeps_a_bounded_number_of_buckets_least_recent_first() -> None:
    now = [0.0]
    limiter = RateLimiter(1.0, 1, max_clients=3, clock=lambda: now[0])
    for n in range(10):
        assert limiter.acquire(f"c{n}") == 0.0
    assert len(limiter) == 3
    assert limiter.acquire("c9") == pytest.approx(1.0)  # kept: still empty
    assert limiter.acquire("c0") == 0.0  # forgotten: a fresh, full bucket
    assert RateLimiter(0.0, 1).acquire("anyone") == 0.0  # 0/s: no limit
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(1.0, 0)


def test_the_limiter_never_grants_more_than_the_burst_across_threads() -> None:
    limiter = RateLimiter(1e-9, 500, clock=lambda: 0.0)
    granted: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        mine = sum(limiter.acquire("shared") == 0.0 for _ in range(200))
        with lock:
            granted.append(mine)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 500


# ---------------------------------------------------------------- CORS


def test_cors_is_off_by_default() -> None:
    with Api().client() as c:
        response = c.get("/trending", headers={"Origin": "https://evil.example"})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers
        preflight = c.options(
            "/events",
            headers={
                "Origin": "https://evil.example",
                "Access-Control-Request-Method": "POST",
            },
        )
        assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_the_configured_origins_only() -> None:
    api = Api(write_api_keys=[WRITE], cors_origins=["https://shop.example"])
    with api.client() as c:
        ok = c.get("/trending", headers={"Origin": "https://shop.example"})
        assert ok.headers["access-control-allow-origin"] == "https://shop.example"
        other = c.get("/trending", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        preflight = c.options(
            "/events",
            headers={
                "Origin": "https://shop.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key, content-type",
            },
        )
        assert preflight.status_code == 200
        assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
        refused = c.post("/events", json=click(), headers={"Origin": "https://shop.example"})
        assert refused.status_code == 401  # CORS is not authentication
        assert refused.headers["access-control-allow-origin"] == "https://shop.example"


# ---------------------------------------------------------------- body limits


def test_oversized_bodies_get_413_with_or_without_content_length() -> None:
    api = Api(max_body_bytes=1024)
    with api.client() as c:
        declared = c.post("/events", content=b"[" + b" " * 2000 + b"]")
        assert declared.status_code == 413 and declared.json()["detail"][0]["loc"] == ["body"]
        assert "2002 bytes" in declared.json()["detail"][0]["msg"]

        def chunks() -> Iterator[bytes]:
            yield b"["
            for _ in range(20):
                yield b" " * 100
            yield b"]"

        chunked = c.post("/events", content=chunks())
        assert chunked.status_code == 413, chunked.text
        assert "limit of 1024 bytes" in chunked.json()["detail"][0]["msg"]
        assert c.post("/events", content=json.dumps(click()).encode()).status_code == 202
    assert api.produced() == 1


def receiving(chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[Request, list[int]]:
    pulled: list[int] = []

    async def receive() -> dict[str, Any]:
        pulled.append(1)
        more = len(pulled) < len(chunks)
        return {"type": "http.request", "body": chunks[len(pulled) - 1], "more_body": more}

    scope = {"type": "http", "method": "POST", "path": "/events", "headers": headers}
    return Request(scope, receive), pulled


def test_a_chunked_body_stops_being_read_at_the_limit() -> None:
    request, pulled = receiving([b"x" * 1000] * 100, [])
    with pytest.raises(BodyTooLargeError):
        asyncio.run(read_body(request, 2500))
    assert len(pulled) == 3  # not the other 97 chunks
    request, pulled = receiving([b"x" * 1000], [(b"content-length", b"10000000")])
    with pytest.raises(BodyTooLargeError, match="10000000 bytes"):
        asyncio.run(read_body(request, 2500))
    assert pulled == []  # refused on the header alone
    request, _ = receiving([b"ab", b"cd"], [])
    assert asyncio.run(read_body(request, 2500)) == b"abcd"


# ---------------------------------------------------------------- dashboard


def test_the_dashboard_refuses_writes_even_with_a_write_key(keyed: tuple[Api, TestClient]) -> None:
    _, c = keyed
    for path in ("/", "/dashboard", "/dashboard/history", "/dashboard/events", "/dashboard/user/u"):
        for method in ("post", "put", "delete", "patch"):
            response = getattr(c, method)(path, headers=key(WRITE))
            assert response.status_code == 405, (method, path)


# ---------------------------------------------------------------- settings


def test_key_settings_come_from_the_environment_and_never_print(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMREC_SERVING__WRITE_API_KEYS", json.dumps([WRITE]))
    monkeypatch.setenv("STREAMREC_SERVING__REQUIRE_READ_KEY", "true")
    settings = Settings()
    assert [k.get_secret_value() for k in settings.serving.write_api_keys] == [WRITE]
    assert WRITE not in settings.model_dump_json() and WRITE not in repr(settings)
    policy = AccessPolicy.from_settings(settings.serving)
    assert not policy.anonymous_reads and not policy.anonymous_writes
    shown = subprocess.run(
        [sys.executable, "-m", "streamrec", "config", "show"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "STREAMREC_SERVING__WRITE_API_KEYS": json.dumps([WRITE])},
        check=True,
    )
    assert WRITE not in shown.stdout and "**********" in shown.stdout


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"write_api_keys": ["short"]}, "write_api_keys"),
        ({"require_read_key": True}, "require_read_key"),
        ({"write_api_keys": [WRITE], "unauthenticated_writes": "always"}, "always"),
        ({"unauthenticated_writes": "sometimes"}, "unauthenticated_writes"),
        ({"cors_origins": ["https://shop.example/path"]}, "cors_origins"),
        ({"rate_limit_burst": 0}, "rate_limit_burst"),
    ],
)
def test_bad_security_settings_are_refused_naming_the_field(
    fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValidationError, match=named):
        ServingSettings(**fields)


# ---------------------------------------------------------------- transport options


class Recorder:
    """Stands in for a confluent-kafka client class, keeping each config it was given."""

    def __init__(self) -> None:
        self.configs: list[dict[str, Any]] = []

    def __call__(self, config: dict[str, Any]) -> Any:
        self.configs.append(config)
        recorder = self

        class Client:
            def subscribe(self, *_: Any, **__: Any) -> None:
                pass

            def __getattr__(self, name: str) -> Any:
                raise AttributeError(f"{name}: not recorded ({len(recorder.configs)})")

        return Client()


def test_kafka_config_reaches_every_confluent_client(monkeypatch: pytest.MonkeyPatch) -> None:
    sasl = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "streamrec",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/ssl/certs/ca.pem",
    }
    monkeypatch.setenv("STREAMREC_KAFKA_CONFIG", json.dumps(sasl))
    consumers, producers = Recorder(), Recorder()
    monkeypatch.setattr(kafka_io, "Consumer", consumers)
    monkeypatch.setattr(kafka_io, "Producer", producers)
    settings = Settings(redis_url="redis://redis.invalid:6379/0")
    kafka_worker(settings, "w1")  # the worker's consumer and its dead-letter producer
    EventProducer(settings.kafka_bootstrap, settings.topics, settings.kafka_config)  # serve
    kafka_io.KafkaTailSource(settings.kafka_bootstrap, "items", settings.kafka_config, {})
    assert len(consumers.configs) == 2 and len(producers.configs) == 2
    for config in consumers.configs + producers.configs:
        assert sasl.items() <= config.items()
    assert sasl.items() <= kafka_io.client_config("b:9092", settings.kafka_config).items()


def test_a_rediss_url_builds_a_tls_pool_with_credentials_without_connecting() -> None:
    url = "rediss://streamrec:p%40ss@redis.invalid:6380/2?ssl_ca_certs=/etc/ssl/ca.pem"
    started = time.monotonic()
    store = RedisStore(url)
    assert time.monotonic() - started < 1.0  # no connection attempted
    pool = store._client.connection_pool
    assert issubclass(pool.connection_class, redis.SSLConnection)
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("streamrec", "p@ss")
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.invalid", 6380, 2)
    assert kwargs["ssl_ca_certs"] == "/etc/ssl/ca.pem"
    plain = RedisStore("redis://:only-password@redis.invalid:6379/0")._client.connection_pool
    assert not issubclass(plain.connection_class, redis.SSLConnection)
    assert plain.connection_kwargs["password"] == "only-password"


def test_metrics_count_every_refusal_by_route_and_status(keyed: tuple[Api, TestClient]) -> None:
    api, c = keyed
    c.post("/events", json=click())  # 401
    c.post("/events", json=click(), headers=key(OTHER))  # 403
    c.post("/events", json=click(1), headers=key(WRITE))  # 202
    c.get("/no/such/path", headers=key(READ))  # 404, no route
    big = {**click(2), "padding": "x" * (api.settings.serving.max_body_bytes + 1)}
    c.post("/events", json=big, headers=key(WRITE))  # 413
    text = c.get("/metrics", headers=key(READ)).text
    for route, method, status, count in [
        ("/events", "POST", "401", 1),
        ("/events", "POST", "403", 1),
        ("/events", "POST", "202", 1),
        ("/events", "POST", "413", 1),
        ("unmatched", "GET", "404", 1),
    ]:
        line = (
            f'streamrec_http_responses_total{{method="{method}",route="{route}",'
            f'status="{status}"}} {count:.1f}'
        )
        assert line in text, line
