"""HnswIndex beyond the contract: growth, recall against the exact twin, and concurrent use."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from features.ann import BruteForceIndex, HnswIndex


def clustered(n: int, dim: int, seed: int, clusters: int = 50) -> np.ndarray:
    """Points around random centres: the shape of real item embeddings, unlike pure noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, dim))


def recall_at_10(approx: HnswIndex, exact: BruteForceIndex, queries: np.ndarray) -> float:
    found = 0
    for q in queries:
        truth = {id_ for id_, _ in exact.query(q, k=10)}
        found += len(truth & {id_ for id_, _ in approx.query(q, k=10)})
    return found / (10 * len(queries))


def test_capacity_grows_geometrically_before_it_fills() -> None:
    vectors = clustered(1_000, 16, seed=2)
    index = HnswIndex(16, M=8, ef_construction=64, max_elements=16, seed=0)
    capacities = {index.capacity}
    for start in range(0, 1_000, 7):  # hnswlib raises if an add finds the graph full
        stop = min(start + 7, 1_000)
        index.upsert([f"i{j}" for j in range(start, stop)], vectors[start:stop])
        capacities.add(index.capacity)
    assert len(index) == 1_000 and index.capacity >= 1_000
    assert len(capacities) <= 8  # 16 → 1024 by doubling, not one resize per batch
    assert all(index.query(vectors[j], k=1)[0][0] == f"i{j}" for j in range(0, 1_000, 10))


def test_ef_search_survives_a_snapshot(tmp_path: Path) -> None:
    index = HnswIndex(8, ef_search=37, max_elements=4)
    index.upsert(["a", "b"], np.eye(8)[:2])
    index.save(tmp_path, {})
    loaded, _ = HnswIndex.load(tmp_path)
    assert loaded.ef_search == 37  # hnswlib alone would come back with ef = 10
    assert (loaded.M, loaded.ef_construction) == (index.M, index.ef_construction)
    loaded.ef_search = 80
    assert loaded.ef_search == 80


def test_k_near_the_live_count_in_a_sparse_graph_returns_what_hnswlib_reaches() -> None:
    vectors = np.random.default_rng(3).normal(size=(60, 8))
    # M=2 builds a graph whose search cannot reach every item; hnswlib then raises instead
    # of returning fewer than k.
    index = HnswIndex(8, M=2, ef_construction=4, seed=3, num_threads=1)
    index.upsert([f"i{j}" for j in range(60)], vectors)
    unit = vectors[0] / np.linalg.norm(vectors[0])
    with pytest.raises(RuntimeError, match="contiguous 2D array"):
        index._hnsw.knn_query(unit.astype(np.float32), k=60)

    hits = index.query(vectors[0], k=60)
    assert 50 <= len(hits) < 60 and len({id_ for id_, _ in hits}) == len(hits)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert hits[0][0] == "i0"
    assert len(index.query(vectors[0], k=60, exclude={"i0"})) == len(hits) - 1


@pytest.fixture(scope="module")
def catalog() -> tuple[np.ndarray, np.ndarray]:
    data = clustered(20_000 + 200, 64, seed=3, clusters=100)
    return data[:20_000], data[20_000:]


def test_recall_at_10_against_brute_force(catalog: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries = catalog
    ids = [f"i{j}" for j in range(len(vectors))]
    approx = HnswIndex(64, M=16, ef_construction=100, ef_search=64, seed=0)
    exact = BruteForceIndex(64)
    for index in (approx, exact):
        index.upsert(ids, vectors)
    assert recall_at_10(approx, exact, queries) >= 0.95

    # After removing a fifth of the catalog, removed items are skipped and recall holds.
    gone = ids[::5]
    approx.remove(gone)
    exact.remove(gone)
    assert recall_at_10(approx, exact, queries) >= 0.95
    hits = {id_ for q in queries for id_, _ in approx.query(q, k=10)}
    assert not hits & set(gone)


def test_concurrent_queries_during_upserts_and_removes() -> None:
    """Readers query while a writer grows, updates and deletes. With the index's lock taken
    out, this fails on every run tried: hnswlib segfaults or corrupts the heap, or a search
    returns a label the id map does not hold yet."""
    dim, preload, total, batch = 16, 2_000, 6_000, 40
    rng = np.random.default_rng(4)
    vectors = clustered(total, dim, seed=5)
    ids = [f"i{j}" for j in range(total)]
    known = set(ids)
    # growth 1.1: a dozen resize_index calls happen while the readers search.
    index = HnswIndex(dim, M=8, ef_construction=40, ef_search=32, growth=1.1, seed=0)
    index.upsert(ids[:preload], vectors[:preload])

    removed_order: list[str] = []  # appended only after remove() has returned
    removed_at: dict[str, int] = {}
    errors: list[BaseException] = []
    done = threading.Event()
    queries_run = [0]

    current = vectors.copy()  # each item's latest vector, written by the writer alone

    def writer() -> None:
        try:
            live = list(range(preload))
            for start in range(preload, total, batch):
                index.upsert(ids[start : start + batch], vectors[start : start + batch])
                live += range(start, start + batch)
                picks = rng.choice(live, size=25, replace=False)
                updated, gone = picks[:10], set(picks[10:].tolist())
                current[updated] += rng.normal(size=(10, dim))
                index.upsert([ids[j] for j in updated], current[updated])
                index.remove([ids[j] for j in sorted(gone)])
                live = [j for j in live if j not in gone]
                for j in gone:
                    removed_at[ids[j]] = len(removed_order)
                    removed_order.append(ids[j])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    def reader(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            while not done.is_set():
                q = vectors[local.integers(total)] + 0.1 * local.normal(size=dim)
                exclude = {ids[j] for j in local.integers(0, total, 5)}
                removed_before = len(removed_order)
                hits = index.query(q, k=10, exclude=exclude)
                got = [id_ for id_, _ in hits]
                scores = [s for _, s in hits]
                assert len(got) == 10 and len(set(got)) == 10, hits
                assert set(got) <= known and not set(got) & exclude, hits
                assert scores == sorted(scores, reverse=True), hits
                assert all(-1.001 <= s <= 1.001 for s in scores), hits
                stale = [i for i in got if removed_at.get(i, removed_before) < removed_before]
                assert not stale, f"removed before the query began: {stale}"
                queries_run[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,), daemon=True) for s in range(3)]
    threads.append(threading.Thread(target=writer, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert not errors, errors[:3]
    assert queries_run[0] > 100, "the readers barely overlapped the writer"

    # The end state is the one a single thread would have built.
    live_rows = [j for j in range(total) if ids[j] not in removed_at]
    live_ids = [ids[j] for j in live_rows]
    assert len(index) == len(live_ids) == total - len(removed_order)
    assert all(id_ in index for id_ in live_ids)
    assert not any(id_ in index for id_ in removed_order)
    exact = BruteForceIndex(dim)
    exact.upsert(live_ids, current[live_rows])
    probes = current[rng.choice(live_rows, 100)] + 0.1 * rng.normal(size=(100, dim))
    assert recall_at_10(index, exact, probes) >= 0.9
