"""A worker and an API as real processes, on topics and Redis keys of their own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import httpx
from confluent_kafka.admin import AdminClient

from features.keys import Keys
from features.sharding import namespace_pattern
from features.stores.redis_store import RedisStore
from streams.io.producer import EventProducer
from streams.schema import Event
from streams.settings import TopicSettings
from tests.helpers import free_port, start, stop, wait_for


class Deployment:
    """A worker and an API process on topics and keys of their own."""

    def __init__(
        self,
        bootstrap: str,
        redis_url: str,
        partitions: int = 3,
        env: dict[str, str] | None = None,
    ) -> None:
        run = f"it-{uuid.uuid4().hex[:8]}"
        self.bootstrap, self.redis_url, self.namespace = bootstrap, redis_url, run
        self.topics = {
            "interactions": f"{run}.interactions",
            "items": f"{run}.items",
            "impressions": f"{run}.impressions",
            "dead_letter": f"{run}.dead-letter",
        }
        self.port = free_port()
        self.env = {
            "STREAMREC_KAFKA_BOOTSTRAP": bootstrap,
            "STREAMREC_REDIS_URL": redis_url,
            "STREAMREC_NAMESPACE": run,
            "STREAMREC_WORKER__GROUP_ID": f"{run}-worker",
            "STREAMREC_WORKER__HEARTBEAT_S": "0.5",
            "STREAMREC_WORKER__BATCH_TIMEOUT_MS": "20",
            "STREAMREC_TOPICS__PARTITIONS": str(partitions),
            "STREAMREC_SERVING__PORT": str(self.port),
            "STREAMREC_SERVING__INDEX_SNAPSHOT_DIR": f".streamrec/test-index/{run}",
            **{f"STREAMREC_TOPICS__{k.upper()}": v for k, v in self.topics.items()},
            **(env or {}),
        }
        self.base = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def cli(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "streamrec", *args],
            env={**os.environ, **self.env},
            input=stdin,
            capture_output=True,
            timeout=120,
        )

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace)

    def create_topics(self) -> None:
        created = self.cli("topics", "create")
        assert created.returncode == 0, created.stderr.decode()
        assert created.stdout.decode().count(": created") == 4
        again = self.cli("topics", "create")  # idempotent
        assert again.returncode == 0 and again.stdout.decode().count(": exists") == 4

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        proc = start(["worker", "--worker-id", name], self.env, f"{self.namespace}-{name}")
        self.procs.append(proc)
        return proc

    def up(self) -> None:
        self.create_topics()
        self.worker = self.start_worker("it-worker")
        self.api = start(["serve"], self.env, f"{self.namespace}-api")
        self.procs.append(self.api)
        wait_for("the API and a live worker", self.healthy, timeout_s=60)

    def applied(self, topic: str) -> int:
        """Messages of ``topic`` whose effects are in Redis, from the offset table."""
        store = RedisStore(self.redis_url)
        try:
            offsets = store.hgetall(self.keys.applied_offsets(self.topics[topic]))
        finally:
            store.close()
        return sum(int(o) + 1 for o in offsets.values())

    def healthy(self) -> bool:
        response = httpx.get(f"{self.base}/health", timeout=5)
        return response.status_code == 200 and response.json()["status"] == "ok"

    def feed(self, user: str, k: int = 10) -> list[str]:
        body = httpx.get(f"{self.base}/feed/{user}", params={"k": k}, timeout=5).json()
        assert body["degraded"] is False
        return [item["item_id"] for item in body["items"]]

    def down(self) -> None:
        for proc in self.procs:
            stop(proc)
        shutil.rmtree(self.env["STREAMREC_SERVING__INDEX_SNAPSHOT_DIR"], ignore_errors=True)
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.delete_topics(list(self.topics.values())).values():
            try:
                future.result(timeout=30)
            except Exception:  # noqa: BLE001, S110 - best-effort cleanup
                pass
        store = RedisStore(self.redis_url)
        store.flush_namespace(namespace_pattern(self.namespace))
        store.close()


def produce(deployment: Deployment, events: Sequence[Event], linger_ms: int = 50) -> None:
    """Send ``events`` to the deployment's topics through the SDK, and wait for delivery."""
    topics = TopicSettings(**dict(deployment.topics))
    with EventProducer(deployment.bootstrap, topics, linger_ms=linger_ms) as producer:
        for event in events:
            producer.send(event)


@contextmanager
def deployed(deployment: Deployment, *, start: bool = True) -> Iterator[Deployment]:
    """``deployment`` up (or only its topics, with ``start=False``), and down afterwards."""
    try:
        if start:
            deployment.up()
        else:
            deployment.create_topics()
        yield deployment
    finally:
        deployment.down()
