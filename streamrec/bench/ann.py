"""`streamrec bench ann`: the HNSW replica's inserts/s, and its qps and recall@10 while items
keep arriving, against exact brute force over the same data in the same run.

1. Build: upsert 90% of ``n`` seeded, clustered vectors in batches → ``inserts_per_s``
   (growth by ``resize_index`` included).
2. Serve while streaming: a background thread upserts the last 10% in batches of
   :data:`STREAM_BATCH` at ``insert_rate`` items/s (0: as fast as it can), as the items
   consumer does, while the main thread runs ``queries`` single-vector queries (k=10) →
   ``qps`` and ``query_p99_ms``. ``stream_inserts_per_s`` is the rate the inserts kept up
   while the queries ran. The index takes its write lock a small chunk at a time and lets
   waiting queries in between chunks; ``qps_quiet`` is the same queries with no writer.
3. ``recall_at_10`` is measured against the items present when each query ran. The streamer
   counts items begun (before each upsert) and done (after it); a query that read ``done = lo``
   before it started and ``begun = hi`` after it ended saw exactly the first ``P`` items for
   some ``lo <= P <= hi`` (an upsert is atomic to queries). Exact top-10s over the first ``lo``
   and the first ``hi`` items are computed; when they agree that is the truth for every
   possible ``P``, and when they do not (a new item entered the true top-10 mid-query) the
   query is left out and counted in ``recall_skipped``.
4. ``baseline_qps``: :class:`BruteForceIndex` over all ``n`` items, the same queries one by one.
   ``qps_quiet`` and ``recall_at_10_quiet`` repeat the HNSW queries with no writer.

``bytes_per_item`` is the saved snapshot's size on disk (graph, vectors, id map) over ``n``.
``memory_bytes_per_item`` is hnswlib's in-memory layout per element by its own formula
(level-0 links + vector + label, upper-level links expected at 1/(M−1) levels per element,
the link-list pointer, level and mutex), before capacity slack.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from features.ann import BruteForceIndex, HnswIndex
from features.settings import FeatureSettings
from streamrec.bench.report import print_table

_DEFAULTS = FeatureSettings()
M = _DEFAULTS.ann_m
EF_CONSTRUCTION = _DEFAULTS.ann_ef_construction
EF_SEARCH = _DEFAULTS.ann_ef_search
BUILD_BATCH = 10_000
STREAM_BATCH = 100
K = 10

Matrix = npt.NDArray[np.float32]


def clustered_vectors(n: int, dim: int, seed: int) -> Matrix:
    """``n`` points around ``max(10, n // 1000)`` random centres: item-embedding-like data."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(10, n // 1_000), dim))
    points = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, dim))
    return points.astype(np.float32)


def _exact_top(unit: Matrix, probes: Matrix, prefix: npt.NDArray[np.int64]) -> list[set[int]]:
    """For each probe, the rows of its exact top-K among the first ``prefix[i]`` rows."""
    tops: list[set[int]] = []
    for start in range(0, len(probes), 100):
        scores = probes[start : start + 100] @ unit.T
        for row, size in zip(scores, prefix[start : start + 100], strict=True):
            row[size:] = -np.inf
            tops.append(set(np.argpartition(-row, K - 1)[:K].tolist()))
    return tops


def _timed_queries(index: HnswIndex | BruteForceIndex, probes: Matrix) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    results = [index.query(q, k=K) for q in probes]
    return len(probes) / (time.perf_counter() - started), results


def _recall(results: list[list[tuple[str, float]]], truths: list[set[int] | None]) -> float:
    pairs = [(r, t) for r, t in zip(results, truths, strict=True) if t is not None]
    found = sum(len(t & {int(id_) for id_, _ in r}) for r, t in pairs)
    return found / (K * len(pairs)) if pairs else float("nan")


def _snapshot_bytes(index: HnswIndex) -> int:
    """What the index takes on disk as a serving replica's snapshot."""
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp), {"bench": "ann"})
        return sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())


def _memory_per_item(dim: int) -> float:
    """hnswlib's bytes per item in memory: level 0 links, vector, label, the upper levels'
    share, and the id maps."""
    level0 = 2 * M * 4 + 4 + dim * 4 + 8
    return level0 + (M * 4 + 4) / (M - 1) + 8 + 4 + 40


def _stream(
    index: HnswIndex,
    ids: list[str],
    vectors: Matrix,
    start: int,
    rate: float,
    begun: list[int],
    done: list[int],
) -> None:
    """Upsert rows ``start:`` in batches of :data:`STREAM_BATCH`, ``rate`` items/s at most,
    counting items whose upsert has begun and returned."""
    paced_from = time.perf_counter()
    for first in range(start, len(ids), STREAM_BATCH):
        if rate > 0:
            due = paced_from + (first - start) / rate
            time.sleep(max(0.0, due - time.perf_counter()))
        stop = min(first + STREAM_BATCH, len(ids))
        begun[0] = stop
        index.upsert(ids[first:stop], vectors[first:stop])
        done[0] = stop


@dataclass
class _Served:
    """The queries run while items streamed in: results, the items present before and after
    each one (see the module docstring), latencies, and how many items went in meanwhile."""

    results: list[list[tuple[str, float]]]
    lo: list[int]
    hi: list[int]
    latencies: list[float]
    window_s: float
    inserted: int


def _query_while_streaming(
    index: HnswIndex,
    ids: list[str],
    vectors: Matrix,
    probes: Matrix,
    built: int,
    insert_rate: float,
) -> _Served:
    begun, done = [built], [built]  # items whose upsert has begun / returned
    streaming = threading.Thread(
        target=_stream, args=(index, ids, vectors, built, insert_rate, begun, done)
    )
    streaming.start()
    served = _Served([], [], [], [], 0.0, 0)
    started = time.perf_counter()
    inserted_before = done[0]
    for q in probes:
        served.lo.append(done[0])
        asked = time.perf_counter()
        served.results.append(index.query(q, k=K))
        served.latencies.append(time.perf_counter() - asked)
        served.hi.append(begun[0])
    served.window_s = time.perf_counter() - started
    served.inserted = done[0] - inserted_before
    streaming.join()
    return served


def run_ann_bench(
    *,
    n: int = 100_000,
    dim: int = 64,
    queries: int = 5_000,
    insert_rate: float = 5_000.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Build, then query while streaming the rest in; see the module docstring."""
    data = clustered_vectors(n + queries, dim, seed)
    vectors, probes = data[:n], data[n:]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    probes_unit = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    ids = [str(j) for j in range(n)]
    built = int(0.9 * n)

    index = HnswIndex(dim, M=M, ef_construction=EF_CONSTRUCTION, ef_search=EF_SEARCH, seed=seed)
    started = time.perf_counter()
    for start in range(0, built, BUILD_BATCH):
        stop = min(start + BUILD_BATCH, built)
        index.upsert(ids[start:stop], vectors[start:stop])
    build_s = time.perf_counter() - started

    served = _query_while_streaming(index, ids, vectors, probes, built, insert_rate)
    results, lo, hi = served.results, served.lo, served.hi
    qps = queries / served.window_s

    low = _exact_top(unit, probes_unit, np.array(lo))
    high = _exact_top(unit, probes_unit, np.array(hi))
    truths = [a if a == b else None for a, b in zip(low, high, strict=True)]
    qps_quiet, quiet_results = _timed_queries(index, probes)
    everything = _exact_top(unit, probes_unit, np.full(queries, n))

    exact = BruteForceIndex(dim, capacity=n)
    exact.upsert(ids, vectors)
    baseline_qps, _ = _timed_queries(exact, probes)

    snapshot_bytes = _snapshot_bytes(index)
    memory_per_item = _memory_per_item(dim)

    figures: dict[str, Any] = {
        "bench": "ann",
        "n": n,
        "dim": dim,
        "inserts_per_s": round(built / build_s, 1),
        "qps": round(qps, 1),
        "recall_at_10": round(_recall(results, truths), 4),
        "bytes_per_item": round(snapshot_bytes / n, 1),
        "baseline_qps": round(baseline_qps, 1),
        "ratio": round(qps / baseline_qps, 3),
        "queries": queries,
        "queries_during_inserts": sum(1 for x in lo if x < n),
        "insert_rate": insert_rate,
        "stream_inserts_per_s": round(served.inserted / served.window_s, 1),
        "query_p99_ms": round(1000 * float(np.quantile(served.latencies, 0.99)), 3),
        "recall_skipped": truths.count(None),
        "qps_quiet": round(qps_quiet, 1),
        "ratio_quiet": round(qps_quiet / baseline_qps, 3),
        "recall_at_10_quiet": round(_recall(quiet_results, list(everything)), 4),
        "memory_bytes_per_item": round(memory_per_item, 1),
        "build_s": round(build_s, 2),
        "M": M,
        "ef_construction": EF_CONSTRUCTION,
        "ef_search": EF_SEARCH,
    }
    print_table("ann: HNSW while streaming inserts vs exact brute force", figures)
    return figures
