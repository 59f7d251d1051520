"""CPU seconds of the processes a benchmark drives: its worker processes (from
``/proc/<pid>/stat``), every Redis node (``INFO cpu``) and the Kafka broker, so that a run can
say how many µs of each an event costs (the per-core cost model of `bench scale`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from features.stores.redis_store import CLUSTER_SCHEME, is_cluster_url

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of one process so far (0 where /proc is missing)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def broker_pids() -> list[int]:
    """Processes running a Kafka broker on this machine (none when it runs elsewhere)."""
    pids: list[int] = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if b"kafka.Kafka" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def redis_cpu_s(url: str) -> float:
    """CPU seconds every node behind ``url`` has used (its main thread and its I/O)."""
    nodes: list[redis.Redis] = []
    if is_cluster_url(url):
        cluster = RedisCluster.from_url("redis://" + url[len(CLUSTER_SCHEME) :])
        try:
            primaries = cluster.get_primaries()  # type: ignore[no-untyped-call]
            nodes = [redis.Redis(host=n.host, port=n.port) for n in primaries]
        finally:
            cluster.close()
    else:
        nodes = [redis.Redis.from_url(url)]
    total = 0.0
    for node in nodes:
        try:
            info = node.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        finally:
            node.close()
    return total


@dataclass
class CpuSample:
    """CPU seconds so far of the workers, Redis and the broker."""

    workers: float
    redis: float
    broker: float

    @classmethod
    def take(cls, worker_pids: Sequence[int], redis_url: str) -> CpuSample:
        """Read every counter now."""
        return cls(
            workers=sum(process_cpu_s(pid) for pid in worker_pids),
            redis=redis_cpu_s(redis_url),
            broker=sum(process_cpu_s(pid) for pid in broker_pids()),
        )

    def per_event_us(self, start: CpuSample, events: int) -> dict[str, float]:
        """µs of each kind of process per event, from ``start`` to this sample."""
        return {
            "worker_us": round((self.workers - start.workers) / events * 1e6, 1),
            "redis_us": round((self.redis - start.redis) / events * 1e6, 1),
            "broker_us": round((self.broker - start.broker) / events * 1e6, 1),
        }
