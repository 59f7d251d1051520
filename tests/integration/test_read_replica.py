"""The API on a real Redis read replica (``replicaof`` the test Redis): it reads the worker's
writes through the replica, reports the replication lag it measures, and keeps serving from
the primary when the replica goes away."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from streams.schema import Interaction
from tests.helpers import free_port, wait_for
from tests.integration.deployment import Deployment, deployed, produce

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]


@pytest.fixture
def replica_url(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """A real replica of the test Redis, in sync."""
    primary = urlsplit(redis_url)
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--replicaof",
            primary.hostname or "127.0.0.1",
            str(primary.port or 6379),
            "--dir",
            str(tmp_path),
            "--save",
            "",
            "--appendonly",
            "no",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)

    def in_sync() -> bool:
        try:
            return client.info("replication").get("master_link_status") == "up"
        except redis.RedisError:
            return False

    try:
        wait_for("the replica to copy the primary", in_sync, timeout_s=60)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def _replica(base: str) -> dict[str, Any]:
    report = httpx.get(f"{base}/health", timeout=5).json()
    replica: dict[str, Any] = report["store"]["replica"]
    return replica


def test_the_api_reads_the_replica_reports_its_lag_and_falls_back_to_the_primary(
    kafka_bootstrap: str, redis_url: str, replica_url: str
) -> None:
    env = {
        "STREAMREC_REDIS_REPLICA_URL": replica_url,
        "STREAMREC_SERVING__REPLICA_PROBE_INTERVAL_MS": "50",
    }
    with deployed(Deployment(kafka_bootstrap, redis_url, env=env)) as d:
        # Healthy means a live worker: its heartbeat, written on the primary, was read
        # through the replica.
        assert _replica(d.base)["reading"] == "replica"
        now = int(time.time() * 1000)
        items = [f"i{n}" for n in range(5)]

        def clicks(user: str, offset: int) -> list[Interaction]:
            return [
                Interaction(
                    event_id=f"{user}-{item}", user_id=user, item_id=item, type="click", ts=now + n
                )
                for n, item in enumerate(items, start=offset)
            ]

        # The crowd makes the items popular: the reader's feed, read through the replica,
        # offers them.
        produce(d, [c for user in ("a", "b", "c") for c in clicks(user, 0)])
        wait_for("the crowd's clicks to be applied", lambda: d.applied("interactions") >= 15, 30)
        wait_for(
            "the popular items to reach the reader's feed",
            lambda: set(items) <= set(d.feed("reader", k=20)),
            timeout_s=20,
        )
        # The reader clicks them: its seen-set, read through the replica, takes them out.
        produce(d, clicks("reader", 10))
        wait_for("the reader's clicks to be applied", lambda: d.applied("interactions") >= 20, 30)
        wait_for(
            "the reader's seen items to leave the feed",
            lambda: not set(items) & set(d.feed("reader", k=20)),
            timeout_s=20,
        )
        replica = _replica(d.base)
        assert replica["samples"] > 0 and replica["unacknowledged"] == 0
        assert replica["p99_ms"] is not None and replica["p99_ms"] < replica["max_lag_ms"]

        # The replica goes away: reads move to the primary, and the feed keeps its state.
        redis.Redis.from_url(replica_url).shutdown(nosave=True)
        wait_for("reads to move to the primary", lambda: _replica(d.base)["reading"] == "primary")
        assert d.healthy()
        assert not set(items) & set(d.feed("reader", k=20))
