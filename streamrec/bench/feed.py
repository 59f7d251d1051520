"""`bench feed`: the feed API's latency and throughput against a trivial endpoint.

Setup (untimed), on topics and keys of its own: the simulator's catalog of ``catalog``
items (with embeddings) and ``history`` interactions go through the real worker (its own
process, as ``streamrec worker``); the real API (``streamrec serve``'s app, its own process,
one uvicorn worker) loads its HNSW replica of the catalog. A trivial FastAPI app that
returns a fixed list of k ids runs the same way.

Then, with ingestion running at ``rate`` events/s (simulator events, event time = now):

1. Latency: one keep-alive client, requests back to back (no queueing), ``seconds`` each,
   for the feed (``?debug=true``, so every answer carries its per-stage trace; 80% warm
   users, 20% users never seen) and for the trivial endpoint. ``p50_ms``/``p99_ms`` are
   client-observed (HTTP included); ``funnel_*`` and ``stage_*`` come from the traces.
2. Throughput: ``connections`` clients in a closed loop for ``seconds`` against each;
   ``ratio`` = feed requests/s ÷ trivial requests/s.

The load client, the producer, the worker, Redis, Kafka and both servers share this
machine's cores: the ratio is what that costs the feed relative to the bare HTTP stack.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Any

import numpy as np

from streamrec.bench.feed_servers import ServerProcess, free_port, run_load
from streamrec.bench.freshness import WorkerRun, partition_ends
from streamrec.bench.freshness_parts import Load
from streamrec.bench.isolation import cleanup, isolated_settings, reads_from
from streamrec.bench.latency import percentile
from streamrec.bench.report import print_table
from streamrec.services import ensure_services
from streamrec.settings import Settings
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.io.kafka import create_topics
from streams.io.producer import EventProducer

log = logging.getLogger(__name__)

SETUP_TIMEOUT_S = 600.0
STAGES = ("user_state", "retrieval", "filtering", "scoring", "ordering")


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"feed bench: timed out waiting for {what}")
        time.sleep(0.1)


def _ms(seconds: list[float], q: float) -> float | None:
    """Nearest-rank percentile of latencies in seconds, in milliseconds."""
    return round(percentile(seconds, q) * 1000.0, 3) if seconds else None


def _stage_figures(traces: list[dict[str, Any]]) -> dict[str, float | None]:
    """p50/p99 of the server-side funnel total and of each stage, from ``?debug`` traces."""
    out: dict[str, float | None] = {}
    for stage in ("total", *STAGES):
        values = [t["stages_ms"][stage] / 1000.0 for t in traces if stage in t["stages_ms"]]
        name = "funnel" if stage == "total" else f"stage_{stage}"
        out[f"{name}_p50_ms"] = _ms(values, 50)
        out[f"{name}_p99_ms"] = _ms(values, 99)
    return out


def seed_world(run: Settings, sim: StreamSimulator, worker: WorkerRun, history: int) -> int:
    """Publish the simulator's catalog, then ``history`` interactions, each applied by the
    worker before the next; return the "now" (ms) the history ends at."""
    now_ms = int(time.time() * 1000)
    topics = [run.topics.interactions, run.topics.items]
    # The catalog first, applied before any interaction: an interaction whose item has no
    # vector yet leaves the user's embeddings alone.
    for events in (
        sim.initial_items(ts_ms=now_ms - 86_400_000),
        list(sim.events(history, start_ms=now_ms - 3_600_000)),
    ):
        with EventProducer(run.kafka_bootstrap, run.topics, run.kafka_config) as producer:
            for event in events:
                producer.send(event)
        total = sum(partition_ends(run, topics).values())
        _wait(lambda t=total: worker.applied >= t, SETUP_TIMEOUT_S, "the worker")
    return now_ms


def prepare_run(
    settings: Settings, catalog: int, seed: int, users: int | None = None
) -> tuple[Settings, StreamSimulator, int]:
    """Services up, settings of a run of its own (topics created, a free API port, no
    snapshots) and the simulator of its catalog and ``users`` (default catalog / 5, at least
    2,000); returns them with the number of users."""
    ensure_services(settings)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    run = isolated_settings(settings, uuid.uuid4().hex[:8])
    serving = run.serving.model_copy(update={"port": free_port(), "index_snapshot_dir": None})
    run = run.model_copy(update={"serving": serving})
    create_topics(run.kafka_bootstrap, run.topics, run.kafka_config)
    users = users or max(catalog // 5, 2000)
    sim = StreamSimulator(
        SimulatorConfig(users=users, items=catalog, embedding_dim=run.features.embedding_dim),
        seed=seed,
    )
    return run, sim, users


def run_feed_bench(
    settings: Settings,
    *,
    catalog: int = 100_000,
    history: int = 100_000,
    rate: float = 5000.0,
    seconds: float = 15.0,
    connections: int = 4,
    k: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """Feed latency (whole and per stage) and requests/s, against a trivial endpoint."""
    run, sim, users = prepare_run(settings, catalog, seed)
    began = time.perf_counter()
    worker = WorkerRun(run, own_process=True)
    api: ServerProcess | None = None
    trivial: ServerProcess | None = None
    load: Load | None = None
    try:
        worker.start()
        now_ms = seed_world(run, sim, worker, history)
        api = ServerProcess("_api_main", run.model_dump_json(), run.serving.port)
        trivial_port = free_port()
        trivial = ServerProcess("_trivial_main", str(trivial_port), trivial_port)
        trivial.wait_ready(lambda r: r.status_code == 200, SETUP_TIMEOUT_S)
        api.wait_ready(
            lambda r: r.status_code == 200 and r.json()["index"]["items"] >= catalog,
            SETUP_TIMEOUT_S,
        )
        log.info("feed bench: set up in %.1f s", time.perf_counter() - began)

        load = Load(run, list(sim.events(math.ceil(rate * seconds * 4.5), start_ms=now_ms)), rate)
        load.start()
        rng = np.random.default_rng(seed)
        warm = [f"u{n}" for n in rng.integers(0, users, 4000)]
        cold = [f"cold-{n}" for n in range(1000)]
        people = [warm[n] if rng.random() < 0.8 else cold[n % 1000] for n in range(4000)]
        feed_paths = [f"/feed/{u}?k={k}&debug=true" for u in people]
        trivial_paths = [f"/ids?k={k}"]

        feed_latency = run_load(api.url, feed_paths, connections=1, seconds=seconds, traces=True)
        base_latency = run_load(trivial.url, trivial_paths, connections=1, seconds=seconds)
        plain_paths = [p.replace("&debug=true", "") for p in feed_paths]
        feed_rps = run_load(api.url, plain_paths, connections=connections, seconds=seconds)
        base_rps = run_load(trivial.url, trivial_paths, connections=connections, seconds=seconds)
        load.stop.set()
        load.join(timeout=30)
    finally:
        if load is not None:
            load.stop.set()
        for server in (api, trivial):
            if server is not None:
                server.close()
        worker.stop()
        cleanup(run)

    achieved = load.sent / load.elapsed_s if load is not None and load.elapsed_s else None
    figures: dict[str, Any] = {
        "bench": "feed",
        "reads_from": reads_from(settings),
        "catalog": catalog,
        "k": k,
        "rps": round(feed_rps.rps, 1),
        "p50_ms": _ms(feed_latency.latencies_s, 50),
        "p99_ms": _ms(feed_latency.latencies_s, 99),
        **_stage_figures(feed_latency.traces),
        "baseline_rps": round(base_rps.rps, 1),
        "baseline_p50_ms": _ms(base_latency.latencies_s, 50),
        "baseline_p99_ms": _ms(base_latency.latencies_s, 99),
        "ratio": round(feed_rps.rps / base_rps.rps, 4) if base_rps.rps else None,
        "latency_requests": len(feed_latency.latencies_s),
        "errors": feed_latency.errors + feed_rps.errors,
        "baseline_errors": base_latency.errors + base_rps.errors,
        "connections": connections,
        "ingest_rate_target": rate,
        "ingest_rate_achieved": round(achieved, 1) if achieved is not None else None,
        "goals": "p99_ms <= 10, p50_ms <= 3, ratio >= 0.3",
    }
    print_table(f"bench feed ({catalog:,} items, k={k})", figures)
    return figures
