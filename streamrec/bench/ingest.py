"""`streamrec bench ingest`: the worker's events/s into Redis against a bare consume loop.

Both read the same freshly produced topics in the same run; each is timed from its first
message to its last, so consumer-group joins do not count against either.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer

from features.sharding import namespace_pattern
from features.stores.redis_store import RedisStore
from streamrec.bench.isolation import cleanup, isolated_settings
from streamrec.bench.report import print_table
from streamrec.services import ensure_services
from streamrec.settings import Settings
from streamrec.wiring import kafka_worker
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.io.kafka import client_config, create_topics
from streams.io.producer import EventProducer

log = logging.getLogger(__name__)


def produce_simulated(settings: Settings, events: int, seed: int) -> tuple[int, float]:
    """Send ``events`` seeded simulated events to the run's topics: (sent, seconds)."""
    sim = StreamSimulator(SimulatorConfig(embedding_dim=settings.features.embedding_dim), seed=seed)
    start_ms = int(time.time() * 1000) - 3_600_000
    started = time.perf_counter()
    sent = 0
    with EventProducer(
        settings.kafka_bootstrap, settings.topics, settings.kafka_config, linger_ms=50
    ) as producer:
        for event in sim.events(events, start_ms=start_ms):
            producer.send(event)
            sent += 1
    return sent, time.perf_counter() - started


def _bare_consume(settings: Settings, total: int, group: str) -> float:
    """Seconds a plain batch consume loop takes from its first message to the last."""
    consumer = Consumer(
        client_config(settings.kafka_bootstrap, settings.kafka_config)
        | {"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )
    consumer.subscribe([settings.topics.interactions, settings.topics.items])
    seen, first = 0, None
    try:
        while seen < total:
            batch = consumer.consume(num_messages=settings.worker.batch_size, timeout=1.0)
            if batch and first is None:
                first = time.perf_counter()
            seen += sum(1 for m in batch if m.error() is None)
    finally:
        consumer.close()
    return time.perf_counter() - (first or time.perf_counter())


def _worker_consume(settings: Settings, total: int) -> tuple[float, dict[str, int]]:
    """Seconds the real worker (its ``run`` loop, as `streamrec worker` runs it) takes to
    apply ``total`` messages to Redis, from its first applied batch to its last."""
    worker = kafka_worker(settings, worker_id="bench")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    first = None
    try:
        while worker.stats.applied + worker.stats.dead_lettered < total:
            if first is None and worker.stats.batches:
                # The first batch's time is inside its commit; start the clock before it.
                first = time.perf_counter() - worker.stats.last_batch_ms / 1000.0
            time.sleep(0.001)
        seconds = time.perf_counter() - (first or time.perf_counter())
    finally:
        stop.set()
        thread.join(timeout=30)
        worker.store.close()
    return seconds, {"applied": worker.stats.applied, "dead_lettered": worker.stats.dead_lettered}


def _faust_consume(settings: Settings, total: int) -> tuple[float, int]:
    """Seconds the same batch path takes on faust-streaming agents (in a subprocess)."""
    faust_run = settings.model_copy(
        update={
            "namespace": f"{settings.namespace}-faust",
            "worker": settings.worker.model_copy(
                update={"group_id": f"{settings.worker.group_id}-faust"}
            ),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "faust.json"
        try:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "streamrec.bench.faust_runner",
                    faust_run.model_dump_json(),
                    str(total),
                    str(result_file),
                ],
                capture_output=True,
                timeout=600,
                check=False,
            )
            if not result_file.exists():
                output = (result.stdout + result.stderr).decode()[-3000:]
                raise RuntimeError(f"faust run failed: {output}")
            figures = orjson.loads(result_file.read_bytes())
        finally:
            store = RedisStore(settings.redis_url)
            store.flush_namespace(namespace_pattern(faust_run.namespace))
            store.close()
    return float(figures["seconds"]), int(figures["applied"])


def run_ingest_bench(
    settings: Settings, *, events: int, seed: int, with_faust: bool = False
) -> dict[str, Any]:
    """Produce ``events`` simulated events, then time the bare loop and the worker on them."""
    ensure_services(settings)
    run = isolated_settings(settings, uuid.uuid4().hex[:8])
    create_topics(run.kafka_bootstrap, run.topics, run.kafka_config)
    try:
        sent, produce_s = produce_simulated(run, events, seed)
        baseline_s = _bare_consume(run, sent, group=f"{run.worker.group_id}-bare")
        worker_s, stats = _worker_consume(run, sent)
        faust = _faust_consume(run, sent) if with_faust else None
    finally:
        cleanup(run)
    figures: dict[str, Any] = {
        "bench": "ingest",
        "events": sent,
        "partitions": run.topics.partitions,
        "batch_size": run.worker.batch_size,
        "produce_per_s": round(sent / produce_s, 1),
        "events_per_s": round(sent / worker_s, 1),
        "baseline_per_s": round(sent / baseline_s, 1),
        "ratio": round(baseline_s / worker_s, 4),
        **stats,
    }
    if faust is not None:
        faust_s, faust_applied = faust
        figures["faust_per_s"] = round(sent / faust_s, 1)
        figures["faust_applied"] = faust_applied
        figures["faust_vs_worker"] = round(worker_s / faust_s, 4)
    print_table("ingest: worker into Redis vs bare confluent-kafka consume loop", figures)
    return figures
