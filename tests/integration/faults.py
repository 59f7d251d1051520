"""Private Kafka brokers and Redis servers to break, and what fault tests compare against.

The shared services (`streamrec services up`, ports 9092 and 6379) may be in use by other
test runs and benchmarks, so a fault test never stops them: it starts its own broker and its
own Redis with the project's launch code (``streamrec.services``), on free ports and in a
directory of its own, and kills and restarts those.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from features.settings import FeatureSettings
from features.stores.memory_store import InMemoryStore
from features.stores.redis_store import RedisStore
from streamrec.services.common import layout
from streamrec.services.kafka import fetch_kafka_jars, kafka_answers, start_kafka
from streamrec.services.process import is_running, signal_group, stop_process
from streamrec.services.redis import redis_answers, start_redis
from streamrec.settings import ServicesSettings, load_settings
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.schema import Event, Item
from streams.worker.pipeline import run_pipeline
from tests.helpers import free_port, stop, wait_for
from tests.integration.deployment import Deployment
from tests.state import readable_state

#: As in test_exactly_once: neighbour lists unbounded, so that states compare pair by pair.
FEATURES = FeatureSettings(covisitation_neighbours=10_000)
FEATURES_ENV = {"STREAMREC_FEATURES__COVISITATION_NEIGHBOURS": "10000"}


def _kill(pid: int, marker: str) -> None:
    """SIGKILL the process group of a service we started, and reap it."""
    signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while is_running(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.05)


class PrivateRedis:
    """A redis-server of one test: append-only file on (``persistent``) or nothing on disk."""

    def __init__(self, root: Path, *, persistent: bool) -> None:
        self.services = ServicesSettings(data_dir=root, redis_port=free_port())
        self.paths = layout(self.services)
        self.persistent = persistent
        self.url = f"redis://127.0.0.1:{self.services.redis_port}/0"
        self.pid: int | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        self.pid = start_redis(self.services, self.paths, persistent=self.persistent)
        wait_for(f"redis on {self.url}", lambda: redis_answers(self.url, 1.0), timeout_s)

    def kill(self) -> None:
        """kill -9: whatever is not on disk is gone."""
        if self.pid is not None:
            _kill(self.pid, "redis-server")
            self.pid = None

    def answers(self) -> bool:
        return redis_answers(self.url, 0.5)


class PrivateKafka:
    """A single-node KRaft broker of one test, on the jars `streamrec services up` fetched."""

    def __init__(self, root: Path) -> None:
        self.services = ServicesSettings(
            data_dir=root, kafka_port=free_port(), kafka_controller_port=free_port()
        )
        self.paths = layout(self.services)
        self.bootstrap = f"localhost:{self.services.kafka_port}"
        self.pid: int | None = None
        shared_layout = layout(load_settings().services)
        shared = shared_layout.kafka_libs
        if not any(shared.glob("*.jar")):
            # The shared broker may be someone else's (it was already running): fetch the
            # jars here as `streamrec services up` would have.
            fetch_kafka_jars(shared_layout)
        self.paths.kafka_dir.mkdir(parents=True, exist_ok=True)
        # Share the jars (a few hundred MB of downloads) instead of fetching them again.
        self.paths.kafka_libs.symlink_to(shared, target_is_directory=True)

    def start(self, timeout_s: float = 90.0) -> None:
        self.pid = start_kafka(self.services, self.paths)
        wait_for(
            f"kafka on {self.bootstrap}",
            lambda: (
                is_running(self.pid or 0, str(self.paths.kafka_config))
                and kafka_answers(self.bootstrap, {}, 2.0)
                or self._died()
            ),
            timeout_s,
        )

    def _died(self) -> bool:
        if self.pid is not None and not is_running(self.pid, str(self.paths.kafka_config)):
            raise AssertionError(f"kafka exited during startup; see {self.paths.kafka_log}")
        return False

    def stop(self) -> None:
        """A clean shutdown (SIGTERM, as an operator's restart does)."""
        if self.pid is not None:
            stop_process("private kafka", self.pid, str(self.paths.kafka_config))
            self.pid = None

    def kill(self) -> None:
        if self.pid is not None:
            _kill(self.pid, str(self.paths.kafka_config))
            self.pid = None


@contextlib.contextmanager
def cleaned_up(root: Path, *services: PrivateRedis | PrivateKafka) -> Any:
    try:
        yield
    finally:
        for service in services:
            with contextlib.suppress(Exception):
                service.kill()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def stopped_at_exit(deployment: Deployment) -> Any:
    """Stop the deployment's processes at the end (its topics and keys go with the private
    broker and server they live on)."""
    try:
        yield
    finally:
        for proc in deployment.procs:
            stop(proc)
        shutil.rmtree(deployment.env["STREAMREC_SERVING__INDEX_SNAPSHOT_DIR"], ignore_errors=True)


def simulated(n: int, seed: int, items: int = 3_000) -> tuple[list[Item], list[Event]]:
    """Catalog items, then ``n`` interactions over them (no new items mid-stream: the order
    between the two topics is not defined, and categories and embeddings depend on it)."""
    config = SimulatorConfig(users=2_000, items=items, new_item_probability=0.0)
    sim = StreamSimulator(config, seed=seed)
    start = int(time.time() * 1000) - 6 * 3_600_000
    return list(sim.initial_items(start)), list(sim.events(n, start_ms=start))


def ground_truth(
    deployment: Deployment, items: Sequence[Event], interactions: Sequence[Event], now_s: float
) -> dict[str, Any]:
    """The state the same processors reach in one process: the catalog, then the stream."""
    ns = deployment.namespace
    store, _, _ = run_pipeline(items, InMemoryStore(), namespace=ns, features=FEATURES)
    run_pipeline(interactions, store, namespace=ns, features=FEATURES)
    return readable_state(store, deployment.keys, FEATURES, now_s)


def redis_state(deployment: Deployment, now_s: float) -> dict[str, Any]:
    store = RedisStore(deployment.redis_url)
    try:
        return readable_state(store, deployment.keys, FEATURES, now_s)
    finally:
        store.close()


def log_text(name: str) -> str:
    """What a process started by ``tests.helpers.start`` has logged so far."""
    path = Path(__file__).parent.parent.parent / "artifacts" / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
