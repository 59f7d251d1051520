"""`streamrec bench memory`: Redis bytes per item and per active user, measured with MEMORY
USAGE after a simulated stream; the seen-set's in-run baseline is the Bloom filter it could
have been (at the same number of items and a 1% false-positive rate)."""

from __future__ import annotations

import math
import time
import uuid
from collections import defaultdict
from typing import Any

import redis

from features.keys import Keys
from features.stores.redis_store import RedisStore
from streamrec.bench.report import print_table
from streamrec.services import ensure_services
from streamrec.settings import Settings
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.worker.pipeline import run_pipeline

#: Per-item and per-user key kinds (the part after the namespace).
ITEM_KINDS = ("item", "emb", "covis")
USER_KINDS = ("seen", "neg", "sess", "user")


def bloom_bytes(n: int, false_positive_rate: float = 0.01) -> float:
    """Bytes of an optimal Bloom filter holding ``n`` items.

    Examples:
        >>> round(bloom_bytes(1000))
        1198
    """
    return -n * math.log(false_positive_rate) / (math.log(2) ** 2) / 8


def run_memory_bench(settings: Settings, *, events: int, seed: int) -> dict[str, Any]:
    """Apply a simulated stream to Redis and measure what each key kind costs."""
    ensure_services(settings)
    namespace = f"bench-mem-{uuid.uuid4().hex[:8]}"
    keys = Keys(namespace)
    store = RedisStore(settings.redis_url)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        sim = StreamSimulator(SimulatorConfig(embedding_dim=settings.features.embedding_dim), seed)
        start = int(time.time() * 1000) - 6 * 3_600_000
        stream = [*sim.initial_items(start), *sim.events(events, start_ms=start)]
        run_pipeline(stream, store, namespace=namespace, features=settings.features)
        sizes: dict[str, list[int]] = defaultdict(list)
        seen_members: list[int] = []
        for raw in client.scan_iter(match="{" + namespace + "}:*", count=1000):
            key = raw.decode()
            kind = key[len(keys.prefix) :].split(":")[0]
            sizes[kind].append(int(client.memory_usage(raw, samples=0) or 0))
            if kind == "seen":
                seen_members.append(int(client.zcard(raw)))
    finally:
        for raw in client.scan_iter(match="{" + namespace + "}:*", count=1000):
            client.delete(raw)
        client.close()
        store.close()
    items = len(sizes["item"])
    users = len(sizes["seen"])
    shared = sum(sum(v) for k, v in sizes.items() if k not in ITEM_KINDS + USER_KINDS)
    per_item = (sum(sum(sizes[k]) for k in ITEM_KINDS) + shared) / max(items, 1)
    per_user = sum(sum(sizes[k]) for k in USER_KINDS) / max(users, 1)
    seen_per_user = sum(sizes["seen"]) / max(users, 1)
    mean_seen = sum(seen_members) / max(len(seen_members), 1)
    baseline = bloom_bytes(int(mean_seen))
    figures: dict[str, Any] = {
        "bench": "memory",
        "events": events,
        "items": items,
        "active_users": users,
        "bytes_per_item": round(per_item, 1),
        "bytes_per_active_user": round(per_user, 1),
        "seen_items_per_user": round(mean_seen, 1),
        "seen_set_bytes_per_user": round(seen_per_user, 1),
        "baseline_bloom_bytes_per_user": round(baseline, 1),
        "ratio": round(seen_per_user / baseline, 3) if baseline else None,
        **{f"bytes_{kind}_mean": round(sum(v) / len(v), 1) for kind, v in sorted(sizes.items())},
    }
    print_table("memory: Redis bytes per item and per active user", figures)
    return figures
