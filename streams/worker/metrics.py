"""Prometheus metrics of a worker process, read from its stats by a small exporter thread
(the batch path itself never touches them)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from streams.worker.runtime import Worker


class WorkerMetrics:
    """Applied events by type, dead letters, duplicates skipped, re-sends, rewinds, store up,
    conflicts, batches, lag per partition, last batch time and freshness, exported at
    ``/metrics`` on ``port``.

    Examples:
        >>> from streams.worker.pipeline import run_pipeline
        >>> from streams.schema import Interaction
        >>> _, worker, _ = run_pipeline(
        ...     [Interaction(event_id="e", user_id="u", item_id="i", type="click", ts=1_000)]
        ... )
        >>> metrics = WorkerMetrics(worker)
        >>> metrics.update()
        >>> metrics.registry.get_sample_value("streamrec_worker_events_total", {"type": "click"})
        1.0
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.registry = r = CollectorRegistry()
        self.events = Counter("streamrec_worker_events", "Events applied", ["type"], registry=r)
        self.dead = Counter("streamrec_worker_dead_lettered", "Messages dead-lettered", registry=r)
        self.duplicates = Counter(
            "streamrec_worker_duplicates_skipped", "Messages at or below the offset", registry=r
        )
        self.resent = Counter(
            "streamrec_worker_resent",
            "Interactions dead-lettered as re-sends of an applied event id",
            registry=r,
        )
        self.rewinds = Counter(
            "streamrec_worker_rewinds",
            "Partitions rewound to rebuild state the store lost",
            registry=r,
        )
        self.store_up = Gauge(
            "streamrec_worker_store_up", "1 while the store answers, 0 in an outage", registry=r
        )
        self.conflicts = Counter(
            "streamrec_worker_conflicts", "Batches recomputed after a conflict", registry=r
        )
        self.batches = Counter("streamrec_worker_batches", "Batches committed", registry=r)
        self.lag = Gauge(
            "streamrec_worker_lag", "Messages behind, per partition", ["partition"], registry=r
        )
        self.batch_ms = Gauge("streamrec_worker_last_batch_ms", "Last batch time", registry=r)
        self.batch_limit = Gauge(
            "streamrec_worker_batch_limit",
            "Messages per batch the commit-time target allows now",
            registry=r,
        )
        self.freshness = Gauge(
            "streamrec_worker_freshness_ms",
            "Event time to applied, recent events",
            ["quantile"],
            registry=r,
        )
        self._seen: dict[str, float] = {}

    def update(self) -> None:
        """Bring the metrics up to the worker's current stats."""
        stats = self.worker.stats
        for kind, count in stats.by_type.items():
            self._advance(self.events.labels(kind), f"type:{kind}", count)
        self._advance(self.dead, "dead", stats.dead_lettered)
        self._advance(self.duplicates, "dup", stats.skipped_duplicates)
        self._advance(self.resent, "resent", stats.resent)
        recovery = self.worker.recovery
        self._advance(self.rewinds, "rewinds", recovery.rewinds if recovery is not None else 0)
        self.store_up.set(0.0 if self.worker.store_down else 1.0)
        self._advance(self.conflicts, "conflicts", stats.conflicts)
        self._advance(self.batches, "batches", stats.batches)
        self.batch_ms.set(stats.last_batch_ms)
        self.batch_limit.set(self.worker.batch_limit.current)
        for partition, n in stats.lag.items():
            self.lag.labels(partition).set(n)
        samples = sorted(stats.freshness_ms)
        if samples:
            self.freshness.labels("0.5").set(samples[(len(samples) - 1) // 2])
            self.freshness.labels("0.99").set(
                samples[min(len(samples) - 1, len(samples) * 99 // 100)]
            )

    def _advance(self, counter: Any, key: str, total: float) -> None:
        delta = total - self._seen.get(key, 0.0)
        if delta > 0:
            counter.inc(delta)
        self._seen[key] = total

    def serve(self, port: int, stop: threading.Event, every_s: float = 1.0) -> None:
        """Export on ``port`` and refresh every ``every_s`` until ``stop``."""
        start_http_server(port, registry=self.registry)
        refresh: Callable[[], None] = self.update

        def loop() -> None:
            while not stop.wait(every_s):
                refresh()

        threading.Thread(target=loop, name="worker-metrics", daemon=True).start()
