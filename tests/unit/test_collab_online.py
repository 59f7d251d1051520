"""Online collaborative embeddings: symmetrised counts, Procrustes, clusters, what is published."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from features.collab_online import (
    DENSE_EIGEN_MAX_ITEMS,
    OnlineCollab,
    Rows,
    orthonormalise,
    procrustes,
    symmetric_counts,
    top_eigenpairs,
)


def clusters(groups: int, size: int, *, seed: int = 0, noise: int = 1) -> Rows:
    """Co-visitation rows of ``groups`` clusters: each item followed by 6 random items of its
    own cluster (weights 1–3) and ``noise`` of another."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list[tuple[str, float]]] = {}
    for g in range(groups):
        for i in range(size):
            mine = [j for j in rng.choice(size, 7, replace=False).tolist() if j != i][:6]
            row = [(f"g{g}-{j}", float(rng.integers(1, 4))) for j in mine]
            for _ in range(noise):
                other = (g + 1 + int(rng.integers(groups - 1))) % groups
                row.append((f"g{other}-{int(rng.integers(size))}", 1.0))
            rows[f"g{g}-{i}"] = row
    return rows


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_symmetric_counts_by_hand() -> None:
    # b follows a twice as strongly as c does; a follows c; d only ever came last.
    rows = {"a": [("b", 2.0), ("c", 1.0)], "c": [("a", 3.0), ("d", 1.0)], "b": []}
    ids, m = symmetric_counts(rows)
    assert ids == ["a", "b", "c", "d"]
    assert m.toarray().tolist() == [
        [0.0, 2.0, 4.0, 0.0],  # a–c counted in both directions: 1 + 3
        [2.0, 0.0, 0.0, 0.0],
        [4.0, 0.0, 0.0, 1.0],
        [0.0, 0.0, 1.0, 0.0],
    ]
    # With min_count 2 only a and c have two distinct neighbours; b and d go, as rows and
    # as columns.
    ids, m = symmetric_counts(rows, min_count=2)
    assert ids == ["a", "c"] and m.toarray().tolist() == [[0.0, 4.0], [4.0, 0.0]]


def test_self_pairs_and_non_positive_weights_are_dropped() -> None:
    ids, m = symmetric_counts({"a": [("a", 5.0), ("b", 0.0), ("c", -1.0), ("d", 1.0)]})
    # b and c are left with no neighbour at all.
    assert ids == ["a", "d"] and m.toarray().tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_procrustes_recovers_a_rotated_basis_exactly() -> None:
    rng = np.random.default_rng(4)
    old = rng.normal(size=(50, 8))
    rotation = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    new = old @ rotation  # the same vectors in another basis
    r = procrustes(new, old)
    np.testing.assert_allclose(r, rotation.T, atol=1e-12)
    np.testing.assert_allclose(new @ r, old, atol=1e-12)
    np.testing.assert_allclose(r @ r.T, np.eye(8), atol=1e-12)


def test_a_refresh_in_a_new_basis_is_aligned_to_what_was_published() -> None:
    rows = clusters(4, 20)
    first = OnlineCollab(dim=8, min_count=2)
    published = first.refresh(rows).vectors
    # The published frame is some rotation of what a fresh model computes: a refresh must
    # come back in that frame, so nothing has moved and nothing is published.
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(8, 8)))[0]
    rotated = {
        i: (v.astype(np.float64) @ rotation).astype(np.float32) for i, v in published.items()
    }
    again = OnlineCollab(dim=8, min_count=2)
    again.remember(rotated)
    result = again.refresh(rows)
    assert result.vectors == {}
    assert result.anchors == len(published) and result.anchor_cosine > 0.9999
    # Without the alignment every vector would have moved.
    assert max(cos(published[i], rotated[i]) for i in published) < 0.99


def test_ppmi_svd_puts_items_of_one_cluster_together() -> None:
    rows = clusters(3, 30, noise=2)
    vectors = OnlineCollab(dim=8, min_count=2).refresh(rows).vectors
    ids = sorted(vectors)
    assert len(ids) == 90
    x = np.stack([vectors[i] for i in ids]).astype(np.float64)
    sims = x @ x.T
    group = np.array([i.split("-")[0] for i in ids])
    same = group[:, None] == group[None, :]
    np.fill_diagonal(same, False)
    across = group[:, None] != group[None, :]
    assert sims[same].mean() > 0.5 > 0.1 > sims[across].mean()
    np.fill_diagonal(sims, -2.0)
    nearest = sims.argmax(axis=1)
    assert (group[nearest] == group).all()
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    assert vectors[ids[0]].dtype == np.float32 and vectors[ids[0]].shape == (8,)


def test_only_new_and_moved_items_are_published() -> None:
    rows = dict(clusters(3, 30, noise=2))
    collab = OnlineCollab(dim=4, min_count=2, threshold=0.99)
    first = collab.refresh(rows)
    assert len(first.vectors) == first.new == 90
    collab.publish(first.vectors)
    assert collab.refresh(rows).vectors == {}  # the same rows: nothing moved
    # g0-0 turns into a member of cluster 2, and a new item appears in cluster 1.
    rows["g0-0"] = [(f"g2-{j}", 3.0) for j in range(8)]
    rows["new"] = [(f"g1-{j}", 2.0) for j in range(5)]
    second = collab.refresh(rows)
    assert {"g0-0", "new"} <= set(second.vectors)
    assert second.new == 1
    assert len(second.vectors) <= 10  # a handful, not the catalog
    group2 = [first.vectors[f"g2-{j}"] for j in range(30)]
    assert np.mean([cos(second.vectors["g0-0"], v) for v in group2]) > 0.5


def test_items_short_of_min_count_get_no_vector_yet() -> None:
    rows = dict(clusters(2, 20, noise=0))
    rows["lonely"] = [("g0-1", 1.0), ("g0-2", 1.0)]
    assert "lonely" not in OnlineCollab(dim=8, min_count=3).refresh(rows).vectors
    rows["lonely"] = [("g0-1", 1.0), ("g0-2", 1.0), ("g0-3", 1.0)]
    assert "lonely" in OnlineCollab(dim=8, min_count=3).refresh(rows).vectors


@pytest.mark.parametrize("size", [30, DENSE_EIGEN_MAX_ITEMS // 2 + 10])
def test_refreshes_are_deterministic(size: int) -> None:
    # Two clusters of ``size``: above DENSE_EIGEN_MAX_ITEMS items the iterative solver runs.
    rows = clusters(2, size, noise=2)
    shuffled = dict(reversed(list(rows.items())))

    def run(rows: Rows) -> list[tuple[str, bytes]]:
        collab = OnlineCollab(dim=16, min_count=2, seed=7)
        first = collab.refresh(rows)
        collab.publish(first.vectors)
        rows = {**rows, "extra": [("g0-1", 1.0), ("g0-2", 1.0), ("g1-3", 1.0)]}
        second = collab.refresh(rows)
        return [(i, v.tobytes()) for i, v in [*first.vectors.items(), *second.vectors.items()]]

    assert run(rows) == run(shuffled)


def test_the_iterative_solver_finds_the_dominant_eigenpairs() -> None:
    rng = np.random.default_rng(2)
    n = DENSE_EIGEN_MAX_ITEMS + 100
    basis = np.linalg.qr(rng.normal(size=(n, n)))[0]
    spectrum = np.concatenate([[50.0, -40.0, 30.0, 20.0], rng.uniform(-1, 1, n - 4)])
    m = sp.csr_matrix((basis * spectrum) @ basis.T)
    values, vectors = top_eigenpairs(m, 4, seed=0)
    np.testing.assert_allclose(values, [50.0, -40.0, 30.0, 20.0], rtol=1e-6)
    overlap = np.abs(vectors.T @ basis[:, :4])
    np.testing.assert_allclose(overlap, np.eye(4), atol=1e-4)
    # Warm-started from the answer, one iteration keeps it.
    warm_values, _ = top_eigenpairs(m, 4, seed=0, start=vectors, iterations=1)
    np.testing.assert_allclose(warm_values, values, rtol=1e-6)


def test_orthonormalise_gives_an_orthonormal_basis_of_the_same_span() -> None:
    block = np.random.default_rng(3).normal(size=(500, 12)) @ np.diag(np.logspace(0, 4, 12))
    q = orthonormalise(block)
    np.testing.assert_allclose(q.T @ q, np.eye(12), atol=1e-10)
    np.testing.assert_allclose(q @ (q.T @ block), block, atol=1e-6 * np.abs(block).max())
