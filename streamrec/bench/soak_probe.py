"""What `bench soak` watches besides request latency, so that a drift can be explained: the
CPU each process used (the worker, the API, Redis), the API's own per-stage latency from its
Prometheus metrics, and the size of its ANN replica."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process used so far (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime after the name


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process from /proc (None when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Reading:
    """Cumulative counters at one moment (seconds from the load's start)."""

    t: float
    cpu: dict[str, float | None]
    stage_sums: dict[str, float]
    stage_counts: dict[str, float]
    index_items: int | None


@dataclass
class Probe:
    """Takes :class:`Reading` s of the worker and API processes and of Redis."""

    api_url: str
    worker_pid: int
    api_pid: int
    redis_url: str
    readings: list[Reading] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._redis = redis.Redis.from_url(self.redis_url)
        self._http = httpx.Client(base_url=self.api_url, timeout=5.0)

    def read(self, t: float) -> None:
        """Record one reading; a part that cannot be read is left out, never fatal."""
        cpu: dict[str, float | None] = {
            "worker": cpu_seconds(self.worker_pid),
            "api": cpu_seconds(self.api_pid),
            "redis": None,
        }
        try:
            info = self._redis.info("cpu")
            cpu["redis"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        except redis.RedisError:
            pass
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        items: int | None = None
        try:
            text = self._http.get("/metrics").text
            for family in text_string_to_metric_families(text):
                if family.name != "streamrec_feed_stage_seconds":
                    continue
                for sample in family.samples:
                    stage = sample.labels.get("stage", "")
                    if sample.name.endswith("_sum"):
                        sums[stage] = sample.value
                    elif sample.name.endswith("_count"):
                        counts[stage] = sample.value
            items = int(self._http.get("/health").json()["index"]["items"])
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        self.readings.append(Reading(t, cpu, sums, counts, items))

    def close(self) -> None:
        """Release the connections."""
        self._redis.close()
        self._http.close()

    def minute(self, lo: float, hi: float) -> dict[str, Any]:
        """CPU use (cores), mean ms per stage and the index size over ``[lo, hi)``."""
        inside = [r for r in self.readings if lo <= r.t < hi]
        before = [r for r in self.readings if r.t < lo]
        if not inside:
            return {}
        first = before[-1] if before else inside[0]
        last = inside[-1]
        span = last.t - first.t
        out: dict[str, Any] = {}
        for name in ("worker", "api", "redis"):
            a, b = first.cpu.get(name), last.cpu.get(name)
            if a is not None and b is not None and span > 0:
                out[f"{name}_cpu"] = round((b - a) / span, 3)
        stages = {}
        for stage, total in last.stage_sums.items():
            n = last.stage_counts.get(stage, 0.0) - first.stage_counts.get(stage, 0.0)
            if n > 0:
                stages[stage] = round((total - first.stage_sums.get(stage, 0.0)) / n * 1000, 3)
        if stages:
            out["stage_mean_ms"] = stages
        out["index_items"] = last.index_items
        return out
