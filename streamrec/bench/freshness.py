"""`bench freshness`: how long a produced event takes to become visible to readers.

One phase, on fresh topics and a fresh key namespace:

1. The real worker (:func:`streamrec.wiring.kafka_worker`) runs in a background thread, and a
   serving ANN replica (:func:`streamrec.wiring.index_replica` on a ``KafkaTailSource``) in
   this process. The simulator's catalog and one item per probe (each with an embedding) are
   published first, untimed, and the phase waits until the worker has applied them and the
   replica holds them.
2. A load thread sends simulated events at ``rate`` per second (paced every 5 ms, event time
   = now) for ``seconds``.
3. Meanwhile, evenly spaced, the main thread sends ``probes`` probe clicks (a fresh user
   ``probe-user-N`` on the never-interacted item ``probe-item-N``) and ``new_items`` new items
   with embeddings, each through its own SDK producer with the SDK's defaults, recording
   ``perf_counter()`` just before ``send``.
4. A watcher thread polls every 1 ms: one pipelined Redis read (ZMSCORE of the probe items in
   the shortest half-life's global trending set, EXISTS of each probe user's session
   embedding) and ``item_id in replica.index`` for the new items. A probe is visible when
   both its trending score and its session embedding exist; the time recorded is when the
   read that first saw it returned (an upper bound, at most one poll late).
5. Baseline, same messages, same load: a bare confluent-kafka consumer assigned to every
   partition of both topics (no group, no processing) records when each probe and new item
   first reaches a consumer. ``ratio`` = ``p99_ms / baseline_p99_ms``: how many times the
   Kafka hop's own p99 the full path takes (≥ 1; lower is better).

Percentiles are nearest-rank (:func:`percentile`): the p-th percentile of n values is the
``ceil(p·n/100)``-th smallest, an observed value. Of 200 probes, p99 is the 198th smallest,
i.e. the third largest (two probes were slower).

Freshness depends on the worker's batching: ``consume(num_messages, timeout)`` returns when
the batch is full *or* the timeout passes, so below full batches every event waits up to
``batch_timeout_ms`` in the consumer. The bench therefore runs the configured settings and,
unless ``alt_batch_timeout_ms`` is None, a second phase with only that setting changed, and
reports both (``alt_*`` keys). It does not change any default.

Everything runs in one Python process, as ``streamrec bench`` commands do; the worker, the
load producer and the replica share the GIL with the watcher, which adds CPU contention a
separate ``streamrec worker`` process would not have (see the caveats in the table).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import msgspec
import numpy as np
import redis
from confluent_kafka import Consumer, TopicPartition

from features.keys import Keys
from streamrec.bench.ingest import _cleanup, _isolated
from streamrec.bench.report import print_table
from streamrec.services import ensure_services
from streamrec.settings import Settings
from streamrec.wiring import index_replica, kafka_worker
from streams.kafka_io import KafkaTailSource, client_config, create_topics
from streams.producer import EventProducer
from streams.replica import IndexReplica
from streams.runtime import Worker
from streams.schema import Interaction, Item
from streams.simulator import SimulatorConfig, StreamSimulator

log = logging.getLogger(__name__)

#: Seconds between two polls of the watcher (and between two pacing ticks of the load).
POLL_S = 0.001
TICK_S = 0.005
#: Longest wait for the catalog to be applied, and for the last probes after the load.
SETUP_TIMEOUT_S = 90.0
DRAIN_TIMEOUT_S = 15.0
#: Default batch timeout of the comparison phase (milliseconds).
ALT_BATCH_TIMEOUT_MS = 5


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the ``ceil(q·n/100)``-th smallest value (an observed one).

    Examples:
        >>> percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50)
        3.0
        >>> percentile([float(v) for v in range(1, 201)], 99)  # 3rd largest of 200
        198.0
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside [0, 100]")
    ordered = sorted(values)
    rank = math.ceil(Fraction(str(q)) * len(ordered) / 100)  # exact, unlike 0.99 * 200
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def latency_figures(prefix: str, seconds: Sequence[float]) -> dict[str, float | None]:
    """``{prefix}p50_ms``, ``p99_ms`` and ``max_ms`` of latencies in seconds (None if empty).

    Examples:
        >>> latency_figures("x_", [0.010, 0.020, 0.030])
        {'x_p50_ms': 20.0, 'x_p99_ms': 30.0, 'x_max_ms': 30.0}
    """
    if not seconds:
        return {f"{prefix}p50_ms": None, f"{prefix}p99_ms": None, f"{prefix}max_ms": None}
    return {
        f"{prefix}p50_ms": round(percentile(seconds, 50) * 1000.0, 3),
        f"{prefix}p99_ms": round(percentile(seconds, 99) * 1000.0, 3),
        f"{prefix}max_ms": round(max(seconds) * 1000.0, 3),
    }


def schedule(count: int, start_s: float, span_s: float, phase: float) -> list[float]:
    """``count`` send times spread evenly over ``[start_s, start_s + span_s)``.

    ``phase`` (0 ≤ phase < 1) shifts them within their slot, so two kinds of probe do not fire
    at the same instant.

    Examples:
        >>> schedule(4, 1.0, 2.0, 0.5)
        [1.25, 1.75, 2.25, 2.75]
    """
    if count <= 0:
        return []
    slot = span_s / count
    return [start_s + (n + phase) * slot for n in range(count)]


@dataclass
class _Probes:
    """Send and detection times (``perf_counter`` seconds), shared by the threads."""

    sent: dict[str, float] = field(default_factory=dict)
    visible: dict[str, float] = field(default_factory=dict)
    in_kafka: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pending(self) -> list[str]:
        with self.lock:
            return [key for key in self.sent if key not in self.visible]

    def latencies(self, seen: dict[str, float]) -> list[float]:
        return [seen[k] - t for k, t in self.sent.items() if k in seen]


class _Watcher(threading.Thread):
    """Polls Redis for the probes and the replica for the new items, every :data:`POLL_S`."""

    def __init__(
        self,
        settings: Settings,
        probes: _Probes,
        items: _Probes,
        replica: IndexReplica,
        backlog: Callable[[], int],
    ) -> None:
        super().__init__(name="freshness-watcher", daemon=True)
        self.keys = Keys(settings.namespace)
        self.trending_key = self.keys.trending(settings.features.half_lives_s[0])
        self.client = redis.Redis.from_url(settings.redis_url)
        self.probes, self.items, self.replica = probes, items, replica
        self.backlog = backlog
        self.backlog_samples: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        next_sample = time.perf_counter()
        try:
            while not self.stop.is_set():
                self._poll_probes()
                self._poll_items()
                if time.perf_counter() >= next_sample:
                    self.backlog_samples.append(self.backlog())
                    next_sample += 0.1
                time.sleep(POLL_S)
        finally:
            self.client.close()

    def _poll_probes(self) -> None:
        users = self.probes.pending()
        if not users:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.zmscore(self.trending_key, [_probe_item(u) for u in users])
        for user in users:
            pipe.exists(self.keys.session_embedding(user))
        scores, *sessions = pipe.execute()
        seen_at = time.perf_counter()
        with self.probes.lock:
            for user, score, session in zip(users, scores, sessions, strict=True):
                if score is not None and session:
                    self.probes.visible[user] = seen_at

    def _poll_items(self) -> None:
        for item_id in self.items.pending():
            if item_id in self.replica.index:
                with self.items.lock:
                    self.items.visible[item_id] = time.perf_counter()


class _BareTail(threading.Thread):
    """The baseline: a plain consumer on every partition, noting when each probe arrives."""

    def __init__(
        self, settings: Settings, start: dict[tuple[str, int], int], probes: _Probes, items: _Probes
    ) -> None:
        super().__init__(name="freshness-bare-consumer", daemon=True)
        self.consumer = Consumer(
            client_config(settings.kafka_bootstrap, settings.kafka_config)
            | {"group.id": f"{settings.worker.group_id}-bare", "enable.auto.commit": False}
        )
        self.consumer.assign([TopicPartition(t, p, o) for (t, p), o in start.items()])
        self.interactions = settings.topics.interactions
        self.probes, self.items = probes, items
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                msg = self.consumer.poll(0.05)  # returns as soon as one message is there
                if msg is None or msg.error() is not None:
                    continue
                key = msg.key()
                if key is None or not key.startswith((b"probe-user-", b"fresh-item-")):
                    continue
                now = time.perf_counter()
                target = self.probes if msg.topic() == self.interactions else self.items
                target.in_kafka.setdefault(key.decode(), now)
        finally:
            self.consumer.close()


class _Load(threading.Thread):
    """Sends pre-generated simulator events at ``rate`` per second with event time = now."""

    def __init__(self, settings: Settings, events: list[Interaction | Item], rate: float) -> None:
        super().__init__(name="freshness-load", daemon=True)
        self.producer = EventProducer(
            settings.kafka_bootstrap, settings.topics, settings.kafka_config
        )
        self.events, self.rate = events, rate
        self.sent = 0
        self.elapsed_s = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.perf_counter()
        try:
            while not self.stop.is_set() and self.sent < len(self.events):
                elapsed = time.perf_counter() - started
                due = min(int(self.rate * elapsed), len(self.events))
                now_ms = int(time.time() * 1000)
                while self.sent < due:
                    event = msgspec.structs.replace(self.events[self.sent], ts=now_ms)
                    self.producer.send(event)
                    self.sent += 1
                time.sleep(max(0.0, started + elapsed + TICK_S - time.perf_counter()))
            self.elapsed_s = time.perf_counter() - started
        finally:
            self.producer.close()


def _probe_item(user: str) -> str:
    return "probe-item-" + user.removeprefix("probe-user-")


def _unit(rng: np.random.Generator, dim: int) -> list[float]:
    vector = rng.normal(size=dim)
    return [round(float(x), 6) for x in vector / np.linalg.norm(vector)]


def _end_offsets(settings: Settings, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """High watermark of every partition of ``topics``."""
    consumer = Consumer(
        client_config(settings.kafka_bootstrap, settings.kafka_config)
        | {"group.id": f"{settings.worker.group_id}-meter", "enable.auto.commit": False}
    )
    try:
        out: dict[tuple[str, int], int] = {}
        for topic in topics:
            for partition in range(settings.topics.partitions):
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10.0
                )
                out[(topic, partition)] = int(high)
        return out
    finally:
        consumer.close()


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"freshness bench: timed out waiting for {what}")
        time.sleep(0.01)


def _run_phase(
    settings: Settings, *, rate: float, seconds: float, probes: int, new_items: int, seed: int
) -> dict[str, Any]:
    """One isolated run; figures without a prefix."""
    run = _isolated(settings, uuid.uuid4().hex[:8])
    create_topics(run.kafka_bootstrap, run.topics, run.kafka_config)
    dim = run.features.embedding_dim
    rng = np.random.default_rng(seed + 1)
    sim = StreamSimulator(SimulatorConfig(embedding_dim=dim), seed=seed)
    now_ms = int(time.time() * 1000)
    catalog: list[Item] = sim.initial_items(ts_ms=now_ms)
    users = [f"probe-user-{n}" for n in range(probes)]
    catalog += [Item(item_id=_probe_item(u), ts=now_ms, embedding=_unit(rng, dim)) for u in users]
    load_events = list(sim.events(math.ceil(rate * seconds), start_ms=now_ms))

    probe_times, item_times = _Probes(), _Probes()
    stop_worker = threading.Event()
    worker: Worker = kafka_worker(run, worker_id=f"{run.namespace}-worker")
    worker_thread = threading.Thread(target=worker.run, args=(stop_worker,), daemon=True)
    replica = index_replica(
        run,
        lambda start: KafkaTailSource(
            run.kafka_bootstrap, run.topics.items, run.kafka_config, start
        ),
        snapshot_dir=None,
    )
    sender = EventProducer(run.kafka_bootstrap, run.topics, run.kafka_config)
    load = _Load(run, load_events, rate)
    sent_other = [len(catalog)]  # catalog, probes and new items sent by this thread

    def backlog() -> int:
        done = worker.stats.applied + worker.stats.dead_lettered
        return sent_other[0] + load.sent - done

    watcher = _Watcher(run, probe_times, item_times, replica, backlog)
    bare: _BareTail | None = None
    try:
        worker_thread.start()
        replica.start()
        for item in catalog:
            sender.send(item)
        sender.flush()
        _wait(lambda: backlog() <= 0, SETUP_TIMEOUT_S, "the worker to apply the catalog")
        _wait(
            lambda: replica.ready.is_set() and len(replica.index) >= len(catalog),
            SETUP_TIMEOUT_S,
            "the replica to load the catalog",
        )
        topics = [run.topics.interactions, run.topics.items]
        bare = _BareTail(run, _end_offsets(run, topics), probe_times, item_times)
        bare.start()
        watcher.start()
        time.sleep(1.0)  # let the bare consumer's first fetches settle before anything is sent

        warmup = min(2.0, seconds * 0.1)
        plan = sorted(
            [(t, "probe", n) for n, t in enumerate(schedule(probes, warmup, seconds - warmup, 0.5))]
            + [
                (t, "item", n)
                for n, t in enumerate(schedule(new_items, warmup, seconds - warmup, 0.0))
            ]
        )
        load.start()
        started = time.perf_counter()
        applied_at_start = worker.stats.applied
        for due, kind, n in plan:
            time.sleep(max(0.0, started + due - time.perf_counter()))
            ts = int(time.time() * 1000)
            if kind == "probe":
                user = users[n]
                event: Interaction | Item = Interaction(
                    event_id=f"probe-{n}",
                    user_id=user,
                    item_id=_probe_item(user),
                    type="click",
                    ts=ts,
                )
                times, key = probe_times, user
            else:
                key = f"fresh-item-{n}"
                event = Item(item_id=key, ts=ts, category="news", embedding=_unit(rng, dim))
                times = item_times
            with times.lock:
                times.sent[key] = time.perf_counter()
            sender.send(event)
            sent_other[0] += 1
        load.join(timeout=max(0.0, started + seconds - time.perf_counter()) + 30.0)
        load.stop.set()
        load_end = time.perf_counter()
        applied_during_load = worker.stats.applied - applied_at_start
        end_backlog = backlog()
        _wait(
            lambda: backlog() <= 0 or time.perf_counter() - load_end > DRAIN_TIMEOUT_S,
            DRAIN_TIMEOUT_S + 5.0,
            "the worker to drain",
        )
        drain_s = time.perf_counter() - load_end
        _wait(
            lambda: (
                not probe_times.pending()
                and not item_times.pending()
                or time.perf_counter() - load_end > DRAIN_TIMEOUT_S
            ),
            DRAIN_TIMEOUT_S + 5.0,
            "the last probes",
        )
    finally:
        watcher.stop.set()
        load.stop.set()
        if bare is not None:
            bare.stop.set()
            bare.join(timeout=10)
        if watcher.is_alive():
            watcher.join(timeout=10)
        stop_worker.set()
        worker_thread.join(timeout=30)
        worker.store.close()
        replica.stop()
        sender.close()
        _cleanup(run)

    visible = probe_times.latencies(probe_times.visible)
    baseline = probe_times.latencies(probe_times.in_kafka)
    fresh = item_times.latencies(item_times.visible)
    fresh_baseline = item_times.latencies(item_times.in_kafka)
    # The worker's own share: from the probe reaching a consumer to visible in Redis.
    worker_hop = [
        probe_times.visible[k] - probe_times.in_kafka[k]
        for k in probe_times.visible
        if k in probe_times.in_kafka
    ]
    figures: dict[str, Any] = {
        "batch_size": run.worker.batch_size,
        "batch_timeout_ms": run.worker.batch_timeout_ms,
        "probes": len(probe_times.sent),
        "probes_visible": len(visible),
        **latency_figures("", visible),
        **latency_figures("baseline_", baseline),
        "worker_hop_p99_ms": latency_figures("", worker_hop)["p99_ms"],
        "new_items": len(item_times.sent),
        "new_items_visible": len(fresh),
        **latency_figures("new_item_", fresh),
        **latency_figures("baseline_new_item_", fresh_baseline),
        "events_per_s_target": rate,
        "events_per_s_achieved": round(load.sent / load.elapsed_s, 1) if load.elapsed_s else 0.0,
        "worker_applied_per_s": round(applied_during_load / (load_end - started), 1),
        "max_backlog_events": max(watcher.backlog_samples, default=0),
        "end_backlog_events": end_backlog,
        "drain_ms": round(drain_s * 1000.0, 1),
        "worker_kept_up": end_backlog <= rate,
        "dead_lettered": worker.stats.dead_lettered,
    }
    p99, base_p99 = figures["p99_ms"], figures["baseline_p99_ms"]
    figures["ratio"] = round(p99 / base_p99, 3) if p99 is not None and base_p99 else None
    return figures


def run_freshness_bench(
    settings: Settings,
    *,
    rate: float = 5000.0,
    seconds: float = 20.0,
    probes: int = 200,
    new_items: int = 100,
    seed: int = 0,
    alt_batch_timeout_ms: int | None = ALT_BATCH_TIMEOUT_MS,
) -> dict[str, Any]:
    """p50/p99 from produce to visible in trending + session embedding, and to the ANN replica.

    Runs the given settings, then (unless ``alt_batch_timeout_ms`` is None) the same phase with
    only ``worker.batch_timeout_ms`` changed, reported under ``alt_*`` keys.
    """
    if rate <= 0 or seconds <= 0 or probes < 1 or new_items < 0:
        raise ValueError("rate and seconds must be > 0, probes ≥ 1 and new_items ≥ 0")
    ensure_services(settings)
    kwargs: dict[str, Any] = {
        "rate": rate,
        "seconds": seconds,
        "probes": probes,
        "new_items": new_items,
        "seed": seed,
    }
    figures: dict[str, Any] = {"bench": "freshness", **_run_phase(settings, **kwargs)}
    if alt_batch_timeout_ms is not None:
        alt = settings.model_copy(
            update={
                "worker": settings.worker.model_copy(
                    update={"batch_timeout_ms": alt_batch_timeout_ms}
                )
            }
        )
        for name, value in _run_phase(alt, **kwargs).items():
            figures[f"alt_{name}"] = value
    figures["percentiles"] = (
        f"nearest rank: p99 of {probes} probes is the {math.ceil(Fraction(99, 100) * probes)}-th "
        "smallest"
    )
    figures["ratio_means"] = "p99_ms / baseline_p99_ms (bare consumer on the same probes); ≥ 1"
    figures["goal_p99_ms"], figures["goal_new_item_p99_ms"] = 50.0, 500.0
    print_table("freshness: produce → visible (trending + session; ANN replica)", figures)
    return figures
