"""Pure summaries for the dashboard: trending rows with rank moves and sparklines, recent
feeds, worker heartbeats. No I/O: the sampler feeds them what it read."""

from __future__ import annotations

import math
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.metrics import FeedSample

SPARK_POINTS = 60


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (an observed value), None for no values.

    Examples:
        >>> percentile([5.0, 1.0, 3.0], 50), percentile([], 99)
        (3.0, None)
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered) / 100))
    return ordered[rank - 1]


@dataclass
class TrendingTracker:
    """Remembers each list's previous ranks and each item's recent scores.

    Examples:
        >>> t = TrendingTracker()
        >>> [r["previous_rank"] for r in t.rows("h:g", [("a", 3.0), ("b", 2.0)], set())]
        [None, None]
        >>> rows = t.rows("h:g", [("b", 5.0), ("a", 4.0)], {"b"})
        >>> [(r["item_id"], r["rank"], r["previous_rank"], r["rising"]) for r in rows]
        [('b', 1, 2, True), ('a', 2, 1, False)]
        >>> rows[0]["spark"]
        [2.0, 5.0]
    """

    previous: dict[str, dict[str, int]] = field(default_factory=dict)
    sparks: dict[str, dict[str, deque[float]]] = field(default_factory=dict)

    def rows(
        self, key: str, ranked: Sequence[tuple[str, float]], rising: set[str]
    ) -> list[dict[str, Any]]:
        """Rows of one list (best first) with rank moves against the last call."""
        before = self.previous.get(key, {})
        history = self.sparks.setdefault(key, {})
        out = []
        for rank, (item, score) in enumerate(ranked, start=1):
            spark = history.setdefault(item, deque(maxlen=SPARK_POINTS))
            spark.append(round(score, 4))
            out.append(
                {
                    "item_id": item,
                    "score": score,
                    "rank": rank,
                    "previous_rank": before.get(item),
                    "rising": item in rising,
                    "spark": list(spark),
                }
            )
        listed = {item for item, _ in ranked}
        for item in [i for i in history if i not in listed]:
            del history[item]  # bounded: only what is on the list is remembered
        self.previous[key] = {item: rank for rank, (item, _) in enumerate(ranked, start=1)}
        return out


def funnel_summary(samples: Iterable[FeedSample], window_s: float) -> dict[str, Any]:
    """Requests/s, latency and per-stage percentiles, mean candidates and removals."""
    recent = list(samples)
    n = len(recent)
    stages: dict[str, list[float]] = defaultdict(list)
    candidates: Counter[str] = Counter()
    removed: Counter[str] = Counter()
    for s in recent:
        for stage, ms in s.stages_ms.items():
            stages[stage].append(ms)
        candidates.update(s.candidates)
        removed.update(s.removed)
    latency = [s.seconds * 1000.0 for s in recent]
    return {
        "requests_per_s": n / window_s if window_s > 0 else 0.0,
        "latency_ms": {"p50": percentile(latency, 50), "p99": percentile(latency, 99)},
        "stage_ms": {
            stage: {"p50": percentile(v, 50), "p99": percentile(v, 99)}
            for stage, v in stages.items()
        },
        "candidates": {k: v / n for k, v in sorted(candidates.items())} if n else {},
        "removed": {k: v / n for k, v in sorted(removed.items())} if n else {},
    }


def slot_shares(samples: Iterable[FeedSample]) -> dict[str, dict[str, float]]:
    """Per segment, each source's share of the slots served."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for s in samples:
        counts[s.segment].update(s.slot_sources)
    return {
        segment: {source: n / sum(c.values()) for source, n in sorted(c.items())}
        for segment, c in counts.items()
    }


@dataclass
class StreamRates:
    """Events/s by type from successive cumulative counts in worker heartbeats."""

    last: tuple[float, Counter[str]] | None = None
    rates: dict[str, float] = field(default_factory=dict)

    def update(self, now_s: float, beats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The stream-health block of a snapshot."""
        totals: Counter[str] = Counter()
        lag: dict[str, int] = {}
        dead = 0
        p50s: list[float] = []
        p99s: list[float] = []
        for beat in beats:
            totals.update({k: int(v) for k, v in beat.get("by_type", {}).items()})
            for tp, n in beat.get("lag", {}).items():
                lag[tp] = lag.get(tp, 0) + int(n)
            dead += int(beat.get("dead_lettered", 0))
            fresh = beat.get("freshness_ms") or {}
            if fresh.get("p50") is not None:
                p50s.append(float(fresh["p50"]))
                p99s.append(float(fresh["p99"]))
        if self.last is not None and now_s > self.last[0]:
            elapsed = now_s - self.last[0]
            changed = totals != self.last[1]
            if changed or elapsed > 5.0:
                self.rates = {
                    kind: max(totals[kind] - self.last[1].get(kind, 0), 0) / elapsed
                    for kind in sorted(totals)
                }
                self.last = (now_s, totals)
        else:
            self.last = (now_s, totals)
        return {
            "events_per_s": dict(self.rates),
            "events_per_s_total": sum(self.rates.values()),
            "lag": dict(sorted(lag.items())),
            "lag_total": sum(lag.values()),
            "dead_lettered": dead,
            "freshness_ms": {
                "p50": max(p50s) if p50s else None,
                "p99": max(p99s) if p99s else None,
            },
            "workers": len(beats),
        }
