"""Shared fixtures. Tests that need Kafka or Redis use the real servers that
`streamrec services up` starts (or the ones STREAMREC_* point at), never fakes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from features.sharding import namespace_pattern
from streamrec.settings import Settings, load_settings


def _services_missing(what: str) -> None:
    # In CI the services must be there: a silent skip would hide a broken install.
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not reachable in CI; did `streamrec services up` run?")
    pytest.skip(f"{what} not reachable; run `streamrec services up`")


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings()


@pytest.fixture
def redis_url(base_settings: Settings) -> str:
    from features.stores.redis_store import RedisStore

    store = RedisStore(base_settings.redis_url, socket_timeout_s=1.0)
    try:
        if not store.ping():
            _services_missing(f"redis at {base_settings.redis_url}")
    finally:
        store.close()
    return base_settings.redis_url


@pytest.fixture
def kafka_bootstrap(base_settings: Settings) -> str:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": base_settings.kafka_bootstrap})
    try:
        admin.list_topics(timeout=5)
    except Exception:  # noqa: BLE001
        _services_missing(f"kafka at {base_settings.kafka_bootstrap}")
    return base_settings.kafka_bootstrap


@pytest.fixture(scope="session")
def redis_cluster_url(base_settings: Settings) -> str:
    """The Redis Cluster `streamrec services up --redis-cluster 3` starts (or the one
    STREAMREC_TEST_REDIS_CLUSTER_URL names)."""
    from features.errors import StoreUnavailableError
    from features.stores.redis_store import RedisStore

    first = base_settings.services.redis_cluster_port
    url = os.environ.get("STREAMREC_TEST_REDIS_CLUSTER_URL", f"redis+cluster://localhost:{first}")
    try:
        store = RedisStore(url, socket_timeout_s=1.0)
    except StoreUnavailableError:
        _services_missing(f"a Redis Cluster at {url}")
    try:
        if not store.ping():
            _services_missing(f"a Redis Cluster at {url}")
    finally:
        store.close()
    return url


@pytest.fixture
def redis_cluster_store(redis_cluster_url: str, namespace: str) -> Iterator[object]:
    yield from _namespaced_store(redis_cluster_url, namespace)


@pytest.fixture
def namespace() -> str:
    """A Redis key namespace of this test alone."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_store(redis_url: str, namespace: str) -> Iterator[object]:
    yield from _namespaced_store(redis_url, namespace)


def _namespaced_store(url: str, namespace: str) -> Iterator[object]:
    """A store on ``url`` whose test namespace is deleted afterwards."""
    from features.stores.redis_store import RedisStore

    store = RedisStore(url)
    yield store
    store.flush_namespace(namespace_pattern(namespace))
    store.close()
