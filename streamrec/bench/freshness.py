"""`bench freshness`: how long a produced event takes to become visible to readers.

Each phase runs on fresh topics and a fresh key namespace:

1. The real worker (:func:`streamrec.wiring.kafka_worker`, the loop of ``Worker.run``) runs
   in a process of its own, as ``streamrec worker`` does in production; ``worker_process=False``
   runs it in a thread of this process instead. A serving ANN replica
   (:func:`streamrec.wiring.index_replica` on a ``KafkaTailSource``, no snapshot) runs in this
   process. The simulator's catalog and one item per probe (each with an embedding) are
   published first, untimed; the phase waits until the worker has applied them all and the
   replica holds them.
2. A load thread sends pre-generated simulator events at ``rate`` per second (paced every
   5 ms, event time = now) for ``seconds``.
3. Meanwhile, evenly spaced after a short warm-up, the main thread sends ``probes`` probe
   clicks (a fresh user ``probe-user-N`` on the never-interacted item ``probe-item-N``) and
   ``new_items`` new items with embeddings, through an SDK producer with the SDK's defaults
   (its 5 ms linger included), recording ``perf_counter()`` just before ``send``.
4. A watcher thread polls every 1 ms: one pipelined Redis read (ZMSCORE of the pending probe
   items in the shortest half-life's global trending set, EXISTS of each pending probe user's
   session embedding) and ``item_id in replica.index`` for pending new items. A probe is
   visible when both its trending score and its session embedding exist; the time recorded is
   when the read that first saw it returned (an upper bound, about one poll late at most).
5. Baseline, same messages, same load, same process: a bare confluent-kafka consumer
   assigned to every partition of both topics (no group, no processing, ``poll`` per message)
   records when each probe and new item first reaches a consumer. ``ratio`` =
   ``p99_ms / baseline_p99_ms``: how many times the Kafka hop's own p99 the whole path takes
   (≥ 1; lower is better). ``worker_hop_*`` is the difference per probe (visible − reached a
   consumer): the worker's share.

Percentiles are nearest-rank (:mod:`streamrec.bench.latency`): the p-th percentile of n
values is the ``ceil(p·n/100)``-th smallest, an observed value. Of 200 probes, p99 is the
198th smallest: two probes were slower. A probe never seen within the drain timeout counts
as slower than all others, and a percentile that lands on one is None.

Freshness depends on the worker's batching: ``consume(num_messages, timeout)`` returns when
the batch is full *or* the timeout has passed, so below full batches every event first waits
up to ``batch_timeout_ms`` in the consumer. The bench runs the given settings and then,
unless ``alt_batch_timeout_ms`` is None, a second phase with only that setting changed
(``alt_*`` keys). It changes no default.

Backlog = events sent − events the worker applied (or dead-lettered), sampled every 100 ms;
it includes events still in flight, so a few hundred is normal. ``worker_kept_up`` means
the backlog when the load stopped was at most one second of load.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from streamrec.bench.freshness_parts import (
    BareTail,
    Load,
    Probes,
    Watcher,
    probe_item,
)
from streamrec.bench.isolation import cleanup, isolated_settings, reads_from
from streamrec.bench.latency import latency_figures, schedule
from streamrec.bench.report import print_table
from streamrec.services import ensure_services
from streamrec.settings import Settings
from streamrec.wiring import index_replica, kafka_worker
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.io.kafka import KafkaTailSource, client_config, create_topics
from streams.io.producer import EventProducer
from streams.schema import Interaction, Item

log = logging.getLogger(__name__)

#: Longest wait for the catalog to be applied, and for the last probes after the load.
SETUP_TIMEOUT_S = 90.0
DRAIN_TIMEOUT_S = 15.0
#: Default batch timeout of the comparison phase (milliseconds).
ALT_BATCH_TIMEOUT_MS = 1


class WorkerRun:
    """The real worker, in a process of its own (as ``streamrec worker`` runs) or in a thread.

    Both run the loop of :meth:`Worker.run` (poll a batch, apply, commit) and publish how many
    events they applied and in how many batches, for the backlog figures. The process is
    ``python -c`` on :func:`worker_main`: settings go in on stdin, one stats line per batch
    comes back on stdout, and closing stdin stops it.
    """

    def __init__(self, settings: Settings, own_process: bool) -> None:
        self.settings = settings
        self.own_process = own_process
        self.applied = 0  # events applied or dead-lettered
        self.batches = 0
        self.batch_ms = 0.0  # summed over batches
        self.exited = False
        self._ready = threading.Event()
        self._halt = threading.Event()
        self._threads: list[threading.Thread] = []
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The worker's process id (None when it runs in this process)."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        if self.own_process:
            code = "from streamrec.bench.freshness import worker_main; worker_main()"
            self._process = subprocess.Popen(
                [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            assert self._process.stdin is not None
            self._process.stdin.write(self.settings.model_dump_json().encode() + b"\n")
            self._process.stdin.flush()
            target: Callable[[], None] = self._read_stats
        else:
            target = self._run_here
        thread = threading.Thread(target=target, name="freshness-worker", daemon=True)
        thread.start()
        self._threads.append(thread)
        if not self._ready.wait(SETUP_TIMEOUT_S) or self.exited:
            raise RuntimeError("freshness bench: the worker did not start (see its stderr)")

    def _read_stats(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            if line.startswith(b"ready"):
                self._ready.set()
            elif line.startswith(b"stats "):
                applied, batches, batch_ms = line.split()[1:]
                self.applied, self.batches = int(applied), int(batches)
                self.batch_ms = float(batch_ms)
        self.exited = True
        self._ready.set()

    def _run_here(self) -> None:
        worker = kafka_worker(self.settings, worker_id=f"{self.settings.namespace}-worker")
        self._ready.set()
        try:
            while not self._halt.is_set():
                worker.run_once(self._halt)
                stats = worker.stats
                if stats.batches != self.batches:
                    self.batch_ms += stats.last_batch_ms
                    self.batches = stats.batches
                self.applied = stats.applied + stats.dead_lettered
        finally:
            worker.source.close()
            worker.store.close()

    def stop(self) -> None:
        self._halt.set()
        if self._process is not None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        for thread in self._threads:
            thread.join(timeout=30)


def worker_main() -> None:
    """The worker process: settings on stdin; ``stats applied batches batch_ms`` per batch."""
    settings = Settings.model_validate_json(sys.stdin.readline())
    worker = kafka_worker(settings, worker_id=f"{settings.namespace}-worker")
    halt = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        halt.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    print("ready", flush=True)
    batches, batch_ms = 0, 0.0
    try:
        while not halt.is_set():
            worker.run_once(halt)
            stats = worker.stats
            if stats.batches != batches:
                batches, batch_ms = stats.batches, batch_ms + stats.last_batch_ms
                print(
                    f"stats {stats.applied + stats.dead_lettered} {batches} {batch_ms}", flush=True
                )
    finally:
        worker.source.close()
        worker.store.close()


@dataclass(frozen=True)
class _Workload:
    """What a phase sends, generated once so that both phases send the very same events."""

    catalog: list[Item]  # the simulator's catalog, then one item per probe
    load: list[Interaction | Item]  # event times are replaced by the send time
    users: list[str]  # probe users; probe N clicks probe_item(users[N])
    fresh: list[list[float]]  # embedding of new item N

    @classmethod
    def build(
        cls, dim: int, *, rate: float, seconds: float, probes: int, new_items: int, seed: int
    ) -> _Workload:
        rng = np.random.default_rng(seed + 1)
        sim = StreamSimulator(SimulatorConfig(embedding_dim=dim), seed=seed)
        now_ms = int(time.time() * 1000)
        catalog = sim.initial_items(ts_ms=now_ms)
        users = [f"probe-user-{n}" for n in range(probes)]
        catalog += [
            Item(item_id=probe_item(u), ts=now_ms, embedding=_unit(rng, dim)) for u in users
        ]
        load = list(sim.events(math.ceil(rate * seconds), start_ms=now_ms))
        return cls(catalog, load, users, [_unit(rng, dim) for _ in range(new_items)])


def _unit(rng: np.random.Generator, dim: int) -> list[float]:
    vector = rng.normal(size=dim)
    return [round(float(x), 6) for x in vector / np.linalg.norm(vector)]


def partition_ends(settings: Settings, topics: Sequence[str]) -> dict[tuple[str, int], int]:
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


@dataclass
class _Timing:
    """What the load part of a phase measured."""

    started: float
    load_end: float
    applied: int
    batches: int
    batch_ms: float
    end_backlog: int
    drain_s: float


class _Phase:
    """One isolated run: its topics and keys, the worker, the replica, the load and probes."""

    def __init__(
        self, settings: Settings, work: _Workload, rate: float, worker_process: bool
    ) -> None:
        self.run = run = isolated_settings(settings, uuid.uuid4().hex[:8])
        self.began = time.perf_counter()
        create_topics(run.kafka_bootstrap, run.topics, run.kafka_config)
        self.work, self.rate, self.worker_process = work, rate, worker_process
        self.probe_times, self.item_times = Probes(), Probes()
        self.worker = WorkerRun(run, own_process=worker_process)
        self.replica = index_replica(
            run,
            lambda start: KafkaTailSource(
                run.kafka_bootstrap, run.topics.items, run.kafka_config, start
            ),
            snapshot_dir=None,
        )
        self.sender = EventProducer(run.kafka_bootstrap, run.topics, run.kafka_config)
        self.load = Load(run, work.load, rate)
        self.sent_other = len(work.catalog)  # catalog, probes and new items sent from here
        self.watcher = Watcher(run, self.probe_times, self.item_times, self.replica, self.backlog)
        self.bare: BareTail | None = None

    def backlog(self) -> int:
        """Events sent and not applied yet."""
        return self.sent_other + self.load.sent - self.worker.applied

    def set_up(self) -> None:
        """Start everything; publish the catalog and wait until worker and replica hold it."""
        run, catalog = self.run, self.work.catalog
        self.worker.start()
        self.replica.start()
        for item in catalog:
            self.sender.send(item)
        self.sender.flush()
        _wait(lambda: self.backlog() <= 0, SETUP_TIMEOUT_S, "the worker to apply the catalog")
        _wait(
            lambda: self.replica.ready.is_set() and len(self.replica.index) >= len(catalog),
            SETUP_TIMEOUT_S,
            "the replica to load the catalog",
        )
        topics = [run.topics.interactions, run.topics.items]
        ends = partition_ends(run, topics)
        self.bare = BareTail(run, ends, self.probe_times, self.item_times)
        self.bare.start()
        self.watcher.start()
        log.info("freshness %s: set up in %.1f s", run.namespace, time.perf_counter() - self.began)

    def drive(self, seconds: float) -> _Timing:
        """Run the load for ``seconds`` with the probes and new items spread over it, then
        wait for the worker to drain and the last probes to show."""
        users, fresh, worker = self.work.users, self.work.fresh, self.worker
        warmup = min(2.0, seconds * 0.1)
        span = seconds - warmup
        plan = sorted(
            [(t, "probe", n) for n, t in enumerate(schedule(len(users), warmup, span, 0.5))]
            + [(t, "item", n) for n, t in enumerate(schedule(len(fresh), warmup, span, 0.0))]
        )
        self.load.start()
        started = time.perf_counter()
        applied_at_start = worker.applied
        batches_at_start, batch_ms_at_start = worker.batches, worker.batch_ms
        for due, kind, n in plan:
            time.sleep(max(0.0, started + due - time.perf_counter()))
            self._send_probe(kind, n)
        self.load.join(timeout=max(0.0, started + seconds - time.perf_counter()) + 30.0)
        self.load.stop.set()
        load_end = time.perf_counter()
        applied = worker.applied - applied_at_start
        batches, batch_ms = worker.batches - batches_at_start, worker.batch_ms - batch_ms_at_start
        end_backlog = self.backlog()
        _wait(
            lambda: self.backlog() <= 0 or time.perf_counter() - load_end > DRAIN_TIMEOUT_S,
            DRAIN_TIMEOUT_S + 5.0,
            "the worker to drain",
        )
        drain_s = time.perf_counter() - load_end
        _wait(
            lambda: (
                not self.probe_times.pending()
                and not self.item_times.pending()
                or time.perf_counter() - load_end > DRAIN_TIMEOUT_S
            ),
            DRAIN_TIMEOUT_S + 5.0,
            "the last probes",
        )
        return _Timing(started, load_end, applied, batches, batch_ms, end_backlog, drain_s)

    def _send_probe(self, kind: str, n: int) -> None:
        """Send probe click ``n`` or new item ``n``, noting when it was sent."""
        ts = int(time.time() * 1000)
        if kind == "probe":
            user = self.work.users[n]
            event: Interaction | Item = Interaction(
                event_id=f"probe-{n}", user_id=user, item_id=probe_item(user), type="click", ts=ts
            )
            times, key = self.probe_times, user
        else:
            key = f"fresh-item-{n}"
            event = Item(item_id=key, ts=ts, category="news", embedding=self.work.fresh[n])
            times = self.item_times
        with times.lock:
            times.sent[key] = time.perf_counter()
        self.sender.send(event)
        self.sent_other += 1

    def tear_down(self) -> None:
        """Stop every thread and process, and remove the phase's topics and keys."""
        run = self.run
        self.watcher.stop.set()
        self.load.stop.set()
        if self.bare is not None:
            self.bare.stop.set()
            self.bare.join(timeout=10)
        if self.watcher.is_alive():
            self.watcher.join(timeout=10)
        stopping = time.perf_counter()
        self.worker.stop()
        self.replica.stop()
        self.sender.close()
        cleaning = time.perf_counter()
        cleanup(run)
        log.info(
            "freshness %s: stopped in %.1f s, cleaned up in %.1f s",
            run.namespace,
            cleaning - stopping,
            time.perf_counter() - cleaning,
        )
        log.info("freshness %s: done in %.1f s", run.namespace, time.perf_counter() - self.began)

    def figures(self, timing: _Timing) -> dict[str, Any]:
        """The phase's figures, without a prefix."""
        probes, items, load = self.probe_times, self.item_times, self.load
        # The worker's own share: from the probe reaching a consumer to visible in Redis.
        worker_hop = [
            probes.visible[k] - probes.in_kafka[k] for k in probes.visible if k in probes.in_kafka
        ]
        batches = max(timing.batches, 1)
        achieved = round(load.sent / load.elapsed_s, 1) if load.elapsed_s else 0.0
        figures: dict[str, Any] = {
            "batch_size": self.run.worker.batch_size,
            "batch_timeout_ms": self.run.worker.batch_timeout_ms,
            "probes": len(probes.sent),
            "probes_visible": len(probes.visible),
            **probes.figures("", probes.visible),
            **probes.figures("baseline_", probes.in_kafka),
            "worker_hop_p50_ms": latency_figures("", worker_hop)["p50_ms"],
            "worker_hop_p99_ms": latency_figures("", worker_hop)["p99_ms"],
            "new_items": len(items.sent),
            "new_items_visible": len(items.visible),
            **items.figures("new_item_", items.visible),
            **items.figures("baseline_new_item_", items.in_kafka),
            "events_per_s_target": self.rate,
            "events_per_s_achieved": achieved,
            "worker_applied_per_s": round(timing.applied / (timing.load_end - timing.started), 1),
            "max_backlog_events": max(self.watcher.backlog_samples, default=0),
            "end_backlog_events": timing.end_backlog,
            "drain_ms": round(timing.drain_s * 1000.0, 1),
            "worker_kept_up": timing.end_backlog <= self.rate,
            "worker_process": self.worker_process,
            "worker_batches": int(timing.batches),
            "worker_mean_batch_events": round(timing.applied / batches, 1),
            "worker_mean_batch_ms": round(timing.batch_ms / batches, 1),
        }
        figures["ratio"] = _ratio(figures["p99_ms"], figures["baseline_p99_ms"])
        figures["new_item_ratio"] = _ratio(
            figures["new_item_p99_ms"], figures["baseline_new_item_p99_ms"]
        )
        return figures


def _run_phase(
    settings: Settings,
    *,
    work: _Workload,
    rate: float,
    seconds: float,
    worker_process: bool,
) -> dict[str, Any]:
    """One isolated run; figures without a prefix."""
    phase = _Phase(settings, work, rate, worker_process)
    try:
        phase.set_up()
        timing = phase.drive(seconds)
    finally:
        phase.tear_down()
    return phase.figures(timing)


def _ratio(value: float | None, baseline: float | None) -> float | None:
    return round(value / baseline, 3) if value is not None and baseline else None


def run_freshness_bench(
    settings: Settings,
    *,
    rate: float = 5000.0,
    seconds: float = 20.0,
    probes: int = 200,
    new_items: int = 100,
    seed: int = 0,
    alt_batch_timeout_ms: int | None = ALT_BATCH_TIMEOUT_MS,
    worker_process: bool = True,
) -> dict[str, Any]:
    """p50/p99 from produce to visible in trending + session embedding, and to the ANN replica.

    Runs the given settings, then (unless ``alt_batch_timeout_ms`` is None) the same phase with
    only ``worker.batch_timeout_ms`` changed, reported under ``alt_*`` keys.
    """
    if rate <= 0 or seconds <= 0 or probes < 1 or new_items < 0:
        raise ValueError("rate and seconds must be > 0, probes ≥ 1 and new_items ≥ 0")
    ensure_services(settings)
    work = _Workload.build(
        settings.features.embedding_dim,
        rate=rate,
        seconds=seconds,
        probes=probes,
        new_items=new_items,
        seed=seed,
    )
    kwargs: dict[str, Any] = {
        "work": work,
        "rate": rate,
        "seconds": seconds,
        "worker_process": worker_process,
    }
    figures: dict[str, Any] = {
        "bench": "freshness",
        # The probes are watched where the API reads (STREAMREC_REDIS_REPLICA_URL).
        "reads_from": reads_from(settings),
        **_run_phase(settings, **kwargs),
    }
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
    rank = math.ceil(Fraction(99, 100) * probes)
    figures["percentile_method"] = (
        f"nearest rank: p99 = rank {rank} of {probes} sorted ({probes - rank} probes slower)"
    )
    figures["ratio_means"] = (
        "p99_ms / baseline_p99_ms, baseline = a bare consumer on the same probes (≥ 1, lower"
        " is better)"
    )
    figures["goal_p99_ms"], figures["goal_new_item_p99_ms"] = 50.0, 500.0
    print_table("freshness: produce → visible (trending + session; ANN replica)", figures)
    return figures
