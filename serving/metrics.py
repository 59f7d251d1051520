"""Prometheus metrics of the serving process: per-stage latency, candidates per source,
removals per filter, the bandit's source shares, degraded feeds and dropped impressions.

Each app gets its own registry, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from serving.funnel.funnel import FeedResult

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Latency buckets in seconds: the feed's goal is a few milliseconds.
_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


@dataclass(frozen=True, slots=True)
class FeedSample:
    """One served feed, as the dashboard summarises recent ones."""

    at: float  # time.monotonic() when it was served
    seconds: float
    stages_ms: dict[str, float]
    candidates: dict[str, int]
    removed: dict[str, int]
    segment: str
    slot_sources: tuple[str, ...]


class FeedMetrics:
    """The serving process's metrics, and a bounded window of recent feeds."""

    #: Recent feeds kept for the dashboard (a few seconds' worth at any sane rate).
    RECENT = 4096

    def __init__(self) -> None:
        self.recent: deque[FeedSample] = deque(maxlen=self.RECENT)
        self.registry = CollectorRegistry()
        r = self.registry
        self.feeds = Counter("streamrec_feeds", "Feeds served", ["segment", "degraded"], registry=r)
        self.latency = Histogram(
            "streamrec_feed_seconds", "Whole-feed latency", buckets=_BUCKETS, registry=r
        )
        self.stage_latency = Histogram(
            "streamrec_feed_stage_seconds",
            "Latency per funnel stage",
            ["stage"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.candidates = Counter(
            "streamrec_source_candidates", "Candidates retrieved per source", ["source"], registry=r
        )
        self.source_timeouts = Counter(
            "streamrec_source_timeouts",
            "Sources cut off by their time budget",
            ["source"],
            registry=r,
        )
        self.removed = Counter(
            "streamrec_filter_removed", "Candidates removed per filter", ["filter"], registry=r
        )
        self.slots = Counter(
            "streamrec_slots",
            "Feed slots filled, per segment and source",
            ["segment", "source"],
            registry=r,
        )
        self.responses = Counter(
            "streamrec_http_responses",
            "HTTP responses by route template, method and status (401/403/429 of the access "
            "policy, 413 of the body limit, 503 when the event buffer is full)",
            ["route", "method", "status"],
            registry=r,
        )
        self.impressions_dropped = Counter(
            "streamrec_impressions_dropped", "Impressions not logged (producer full)", registry=r
        )

    def observe_feed(self, result: FeedResult, seconds: float) -> None:
        """Record one served feed."""
        self.feeds.labels(result.segment, str(result.degraded).lower()).inc()
        self.latency.observe(seconds)
        trace = result.trace
        for stage, ms in trace.stages_ms.items():
            if stage != "total":
                self.stage_latency.labels(stage).observe(ms / 1000.0)
        for source, info in trace.sources.items():
            self.candidates.labels(source).inc(int(info.get("candidates", 0)))
            if info.get("timed_out"):
                self.source_timeouts.labels(source).inc()
        for name, count in trace.removed.items():
            if count:
                self.removed.labels(name).inc(count)
        for slot in result.slots:
            self.slots.labels(result.segment, slot.source).inc()
        self.recent.append(
            FeedSample(
                time.monotonic(),
                seconds,
                {k: v for k, v in trace.stages_ms.items() if k != "total"},
                {s: int(i.get("candidates", 0)) for s, i in trace.sources.items()},
                dict(trace.removed),
                result.segment,
                tuple(slot.source for slot in result.slots),
            )
        )

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)
