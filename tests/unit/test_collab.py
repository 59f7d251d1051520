"""Collaborative item embeddings: co-occurrence and PPMI by hand, clusters end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from features.collab import DENSE_SVD_MAX_ITEMS, item_cooccurrence, ppmi, train_item_embeddings

# A 4-item count matrix: a–b 3, a–c 1, c–d 2 (symmetric). Row sums a 4, b 3, c 3, d 2; D = 12.
COUNTS = sp.csr_matrix(np.array([[0, 3, 1, 0], [3, 0, 0, 0], [1, 0, 0, 2], [0, 0, 2, 0]]))


def test_cooccurrence_counts_pairs_within_the_window_by_hand() -> None:
    # u's history in time order is a b a c (given shuffled); v's is c d.
    log = [("u", "c", 40), ("v", "d", 2), ("u", "a", 10), ("u", "a", 30), ("u", "b", 20)]
    log.append(("v", "c", 1))
    items, one = item_cooccurrence(log, window=1)
    assert items == ["a", "b", "c", "d"]
    # window 1: a-b, b-a, a-c, c-d
    assert one.toarray().tolist() == [[0, 2, 1, 0], [2, 0, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0]]
    _, two = item_cooccurrence(log, window=2)
    # window 2 adds distance-2 pairs a-a (never counted) and b-c.
    assert two.toarray().tolist() == [[0, 2, 1, 0], [2, 0, 1, 0], [1, 1, 0, 1], [0, 0, 1, 0]]


def test_cooccurrence_collapses_repeats_and_drops_rare_items_before_windowing() -> None:
    # a viewed then clicked: one position. r has a single interaction: with min_count 2 it is
    # removed before windowing, so a and b become neighbours.
    log = [("u", "a", 1), ("u", "a", 2), ("u", "r", 3), ("u", "b", 4), ("w", "b", 1)]
    items, counts = item_cooccurrence(log, window=1, min_count=2)
    assert items == ["a", "b"]
    assert counts.toarray().tolist() == [[0, 1], [1, 0]]
    items, _ = item_cooccurrence(log, window=1, min_count=1)
    assert items == ["a", "b", "r"]
    # max_items keeps the most frequent, ties broken by id: a 2, b 2, r 1.
    items, _ = item_cooccurrence(log, window=1, max_items=1)
    assert items == ["a"]


def test_ppmi_by_hand_without_smoothing() -> None:
    p = ppmi(COUNTS, alpha=1.0).toarray()
    expected = np.zeros((4, 4))
    expected[0, 1] = expected[1, 0] = math.log(3 * 12 / (4 * 3))  # log 3
    expected[2, 3] = expected[3, 2] = math.log(2 * 12 / (3 * 2))  # log 4
    # a–c: log(1·12 / (4·3)) = log 1 = 0, which is not positive, so it is dropped.
    np.testing.assert_allclose(p, expected, rtol=1e-12)


def test_ppmi_smooths_the_context_distribution() -> None:
    p = ppmi(COUNTS).toarray()  # α = 0.75
    ctx = np.array([4.0, 3.0, 3.0, 2.0]) ** 0.75
    z = ctx.sum()
    assert p[0, 1] == pytest.approx(math.log(3 * z / (4 * ctx[1])))
    assert p[2, 0] == pytest.approx(math.log(1 * z / (3 * ctx[0])))  # rare row, common context
    # a–c: 1·z / (4·3^0.75) < 1, negative PMI, dropped (with α = 1 it was exactly 0).
    assert 1 * z / (4 * ctx[2]) < 1 and p[0, 2] == 0.0


def _two_cluster_log(
    rng: np.random.Generator, users: int, items: int, per_user: int, noise: float = 0.05
) -> list[tuple[str, str, int]]:
    """Users of group A consume items a*, group B items b*, with a little cross-over."""
    log = []
    for u in range(users):
        home, away = ("a", "b") if u % 2 == 0 else ("b", "a")
        for t in range(per_user):
            side = away if rng.random() < noise else home
            log.append((f"u{u}", f"{side}{rng.integers(items)}", t * 1_000))
    order = rng.permutation(len(log))
    return [log[i] for i in order]


def test_items_consumed_by_the_same_users_are_close() -> None:
    log = _two_cluster_log(np.random.default_rng(0), users=80, items=20, per_user=15)
    vecs = train_item_embeddings(log, dim=8, window=3)
    assert len(vecs) == 40
    names = sorted(vecs)
    e = np.stack([vecs[n] for n in names])
    assert e.dtype == np.float32 and e.shape == (40, 8)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-6)
    sims = e @ e.T
    group = np.array([n[0] for n in names])
    same = group[:, None] == group[None, :]
    np.fill_diagonal(same, False)
    across = group[:, None] != group[None, :]
    assert sims[same].mean() - sims[across].mean() > 0.5
    np.fill_diagonal(sims, -np.inf)
    assert (group[sims.argmax(axis=1)] == group).all()  # every nearest neighbour is in-cluster


@pytest.mark.parametrize("items", [20, DENSE_SVD_MAX_ITEMS // 2 + 500])  # dense and ARPACK
def test_training_is_deterministic_and_ignores_input_order(items: int) -> None:
    rng = np.random.default_rng(1)
    log = _two_cluster_log(rng, users=200, items=items, per_user=30)
    first = train_item_embeddings(log, dim=8, seed=3)
    again = train_item_embeddings(list(reversed(log)), dim=8, seed=3)
    assert list(first) == list(again)
    assert all(first[k].tobytes() == again[k].tobytes() for k in first)
    if items > 100:
        assert len(first) > DENSE_SVD_MAX_ITEMS  # really took the sparse SVD path


def test_min_count_is_respected_and_lonely_items_get_no_vector() -> None:
    log = _two_cluster_log(np.random.default_rng(2), users=20, items=5, per_user=10)
    log += [("u0", "once", 99_999), ("solo", "lonely", 1), ("solo", "lonely", 2)]
    vecs = train_item_embeddings(log, dim=4, min_count=2)
    assert "once" not in vecs
    # "lonely" has 2 interactions but only ever next to itself: nothing to be similar to.
    assert "lonely" not in vecs
    assert "once" in train_item_embeddings(log, dim=4, min_count=1)
    assert len(train_item_embeddings(log, dim=4, max_items=3)) <= 3


def test_fewer_items_than_dim_are_zero_padded() -> None:
    log = [(u, i, t) for u in ("u1", "u2", "u3") for t, i in enumerate("abc")]
    vecs = train_item_embeddings(log, dim=16)
    assert sorted(vecs) == ["a", "b", "c"]
    for v in vecs.values():
        assert v.shape == (16,) and v.dtype == np.float32
        assert not v[3:].any()  # three items: at most three components
        assert float(np.linalg.norm(v)) == pytest.approx(1.0, abs=1e-6)


def test_empty_input_and_bad_arguments() -> None:
    assert train_item_embeddings([], dim=8) == {}
    assert train_item_embeddings([("u", "a", 1)], dim=8, min_count=1) == {}
    with pytest.raises(ValueError):
        train_item_embeddings([], dim=0)
    with pytest.raises(ValueError):
        item_cooccurrence([], window=0)
