"""`streamrec bench scale`: worker events/s with 1 and 2 worker processes on 6 partitions,
against a Redis Cluster and against a single Redis, in the same run.

Each configuration gets topics and keys of its own. Its workers (`streamrec worker`
processes, as a deployment runs them) start first; once their group is stable with every
partition held, they are stopped while the events are produced, then continued, and the
clock runs from the first applied message to the last (read from the applied-offsets
table, as `streamrec verify` counts). Over the same span the CPU of the workers, of every
Redis node and of the broker is read, per event: the cost model the README projects from.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from statistics import median
from typing import Any

from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

from features.keys import Keys
from features.stores.redis_store import RedisStore
from streamrec.bench.cpu import CpuSample
from streamrec.bench.ingest import produce_simulated
from streamrec.bench.isolation import cleanup, isolated_settings
from streamrec.bench.report import print_table
from streamrec.services import ensure_services
from streamrec.settings import Settings
from streams.io.kafka import client_config, create_topics

PARTITIONS = 6
_POLL_S = 0.01


def _env(run: Settings) -> dict[str, str]:
    topics = run.topics
    return {
        **os.environ,
        "STREAMREC_KAFKA_BOOTSTRAP": run.kafka_bootstrap,
        "STREAMREC_REDIS_URL": run.redis_url,
        "STREAMREC_REDIS_SHARDS": str(run.redis_shards),
        "STREAMREC_NAMESPACE": run.namespace,
        "STREAMREC_WORKER__GROUP_ID": run.worker.group_id,
        "STREAMREC_WORKER__HEARTBEAT_S": "0.5",
        "STREAMREC_TOPICS__PARTITIONS": str(PARTITIONS),
        "STREAMREC_TOPICS__INTERACTIONS": topics.interactions,
        "STREAMREC_TOPICS__ITEMS": topics.items,
        "STREAMREC_TOPICS__IMPRESSIONS": topics.impressions,
        "STREAMREC_TOPICS__DEAD_LETTER": topics.dead_letter,
    }


def _assigned(admin: AdminClient, run: Settings, workers: int) -> bool:
    """Whether the run's consumer group is stable with ``workers`` members, each holding
    partitions of the interactions topic, all six between them."""
    group = run.worker.group_id
    try:
        described = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except KafkaException:
        return False
    held = [
        {
            tp.partition
            for tp in m.assignment.topic_partitions
            if tp.topic == run.topics.interactions
        }
        for m in described.members
    ]
    stable = described.state == ConsumerGroupState.STABLE
    return stable and len(held) == workers and all(held) and len(set().union(*held)) == PARTITIONS


def _applied(store: RedisStore, run: Settings) -> int:
    """Messages of the run's interactions and items topics whose effects are stored."""
    keys = Keys(run.namespace)
    tables = [keys.applied_offsets(t) for t in (run.topics.interactions, run.topics.items)]
    return sum(int(o) + 1 for table in store.hgetall_many(tables) for o in table.values())


@dataclass
class RunFigures:
    """One configuration's throughput and the CPU its processes spent per event."""

    events_per_s: float
    cpu_us: dict[str, float]


def _timed_run(
    settings: Settings, redis_url: str, shards: int, workers: int, events: int, seed: int
) -> RunFigures:
    """Events/s of ``workers`` worker processes applying ``events`` events into ``redis_url``,
    the namespace split into ``shards``.

    The workers are stopped (SIGSTOP) while the events are produced, then continued
    together: the clock times them working through one backlog, without the bench's own
    producer competing for the cores, and with the group already stable.
    """
    run = isolated_settings(settings, uuid.uuid4().hex[:8]).model_copy(
        update={"redis_url": redis_url, "redis_shards": shards}
    )
    run.topics.partitions = PARTITIONS
    create_topics(run.kafka_bootstrap, run.topics, run.kafka_config)
    store = RedisStore(redis_url)
    admin = AdminClient(client_config(run.kafka_bootstrap, run.kafka_config))
    procs = [
        subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "streamrec", "worker", "--worker-id", f"scale-{n}"],
            env=_env(run),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in range(workers)
    ]
    try:
        deadline = time.monotonic() + 120
        while not _assigned(admin, run, workers):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(
                    f"{workers} worker(s) on {redis_url} did not take the partitions"
                )
            time.sleep(0.1)
        for proc in procs:
            proc.send_signal(signal.SIGSTOP)
        try:
            sent, _ = produce_simulated(run, events, seed)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGCONT)
        pids = [p.pid for p in procs]
        cpu_start = CpuSample.take(pids, redis_url)
        first = None
        deadline = time.monotonic() + 600
        while (done := _applied(store, run)) < sent:
            if first is None and done > 0:
                first = time.perf_counter()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {sent} events applied on {redis_url}")
            time.sleep(_POLL_S)
        elapsed = time.perf_counter() - (first or time.perf_counter())
        cpu = CpuSample.take(pids, redis_url).per_event_us(cpu_start, sent)
        return RunFigures(sent / elapsed, cpu)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
        store.close()
        cleanup(run)


def run_scale_bench(
    settings: Settings,
    *,
    events: int,
    seed: int,
    cluster_url: str | None = None,
    shards: int = 12,
    repeats: int = 3,
) -> dict[str, Any]:
    """1 worker on a single Redis (one shard), then 1 and 2 workers on a cluster (the
    namespace in ``shards`` shards), on the same stream; ``repeats`` rounds of the three,
    each figure the median of its rounds (a shared machine's noise moves single runs by a
    fifth), and ``speedup_2w`` the median of the rounds' own ratios."""
    if cluster_url is None:
        services = settings.services.model_copy(
            update={"redis_cluster_nodes": max(settings.services.redis_cluster_nodes, 3)}
        )
        settings = settings.model_copy(update={"services": services})
        cluster_url = f"redis+cluster://localhost:{services.redis_cluster_port}"
    ensure_services(settings)
    configs = {
        "single_redis_1w": (settings.redis_url, 1, 1),
        "cluster_1w": (cluster_url, shards, 1),
        "cluster_2w": (cluster_url, shards, 2),
    }
    rounds: list[dict[str, RunFigures]] = []
    for _ in range(repeats):
        rounds.append(
            {
                name: _timed_run(settings, url, n_shards, workers, events, seed)
                for name, (url, n_shards, workers) in configs.items()
            }
        )
    speedups = [r["cluster_2w"].events_per_s / r["cluster_1w"].events_per_s for r in rounds]
    figures: dict[str, Any] = {
        "bench": "scale",
        "events": events,
        "partitions": PARTITIONS,
        "cores": os.cpu_count(),
        "shards": shards,
        "repeats": repeats,
    }
    for name in configs:
        figures[name] = round(median(r[name].events_per_s for r in rounds), 1)
    figures["speedup_2w"] = round(median(speedups), 3)
    figures["speedup_2w_rounds"] = [round(x, 3) for x in speedups]
    # The per-core cost model: CPU µs per event of the workers, Redis and the broker.
    for name in configs:
        for kind in rounds[0][name].cpu_us:
            figures[f"{name}_{kind}"] = round(median(r[name].cpu_us[kind] for r in rounds), 1)
    # Cores that 2 workers would need to each go as fast as 1 alone: at the 1-worker rate,
    # twice the CPU of every process per event. Above the machine's cores, the cores bound
    # speedup_2w rather than Redis or the code.
    per_event_us = sum(figures[f"cluster_1w_{kind}"] for kind in rounds[0]["cluster_1w"].cpu_us)
    figures["cores_for_2x"] = round(2 * figures["cluster_1w"] * per_event_us / 1e6, 2)
    print_table("scale: worker processes on a Redis Cluster and on a single Redis", figures)
    return figures
