"""Collaborative item embeddings kept current from the live co-visitation state (GUIDE §2.10).

The offline twin is :mod:`features.collab` (a log → windowed co-occurrence → PPMI → SVD). Here
the counts are already live: every item's co-visitation row holds its strongest decayed
"what followed it" neighbours. A refresh

1. symmetrises the rows (``A + Aᵀ``: followed-by and followed are both co-consumption) and
   keeps the items with at least ``min_count`` distinct neighbours;
2. takes their PPMI (:func:`features.collab.ppmi`, context smoothing α = 0.75);
3. takes its top ``dim`` eigenpairs: PPMI of a symmetric matrix is symmetric, so its SVD is
   its eigendecomposition (``σ = |λ|``) and each item's vector is its row of ``V·√|Λ|``,
   L2-normalised, as in :func:`features.collab.train_item_embeddings`;
4. **aligns** the new basis to the vectors published before, by orthogonal Procrustes over
   the items both have. Session and user embeddings in the store are decayed means of the
   item vectors published earlier: a basis free to rotate would turn the space under them at
   every refresh (an SVD is unique only up to a rotation of its components);
5. returns only the items that are new or whose aligned vector moved (cosine to the published
   one below ``threshold``), so a refresh publishes few upserts.

The eigenpairs come from block subspace iteration, warm-started from the previous refresh's
basis: the co-visitation state changes little in a few minutes, so two iterations per refresh
follow the top eigenspace that a cold start needs several for. Small problems use an exact
dense eigendecomposition. Random starts are seeded and item ids sorted: the same rows give the
same bytes every run.

Pure maths, no I/O: :class:`streams.worker.embedding_refresh.EmbeddingRefresher` reads the rows and
publishes the vectors.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.linalg as sl
import scipy.sparse as sp

from features.collab import CONTEXT_ALPHA, ppmi

Vector = npt.NDArray[np.float32]
Matrix = npt.NDArray[np.float64]
#: Co-visitation rows: item → its (neighbour, weight) pairs.
Rows = Mapping[str, Sequence[tuple[str, float]]]

#: Up to this many items the eigenpairs are exact (dense LAPACK; a few ms at this size).
DENSE_EIGEN_MAX_ITEMS = 400
#: Extra columns of the iterated block beyond ``dim``: they speed up convergence of the last
#: wanted components (the gap to the first unwanted one widens).
OVERSAMPLE = 16
#: Subspace iterations of a cold start, and of a start from the previous basis.
COLD_ITERATIONS = 6
WARM_ITERATIONS = 2


def symmetric_counts(rows: Rows, *, min_count: int = 1) -> tuple[list[str], sp.csr_matrix]:
    """Sorted ids of the items with at least ``min_count`` distinct neighbours, and their
    symmetrised counts ``A + Aᵀ`` among themselves (self-pairs and non-positive weights
    dropped).

    An item counts as a neighbour of the rows it appears in too, so an item that only ever
    comes last (nothing has followed it yet) still has neighbours. Items short of
    ``min_count`` are removed as rows and as columns, as word2vec removes rare words.

    Examples:
        >>> ids, m = symmetric_counts({"a": [("b", 2.0), ("c", 1.0)], "c": [("a", 1.0)]})
        >>> ids, m.toarray().tolist()
        (['a', 'b', 'c'], [[0.0, 2.0, 2.0], [2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
        >>> symmetric_counts({"a": [("b", 2.0), ("c", 1.0)]}, min_count=2)[0]
        ['a']
    """
    if min_count < 1:
        raise ValueError("min_count must be >= 1")
    heads = [item for item, row in rows.items() if row]
    if not heads:
        return [], sp.csr_matrix((0, 0))
    lengths = np.array([len(rows[item]) for item in heads], dtype=np.int64)
    # Flattened in C: (n1, w1, n2, w2, ...) of every row, one after the other.
    flat: list[Any] = list(chain.from_iterable(chain.from_iterable(rows[i] for i in heads)))
    names: list[str] = flat[0::2]
    vocab = sorted(set(heads).union(names))
    code = {item: n for n, item in enumerate(vocab)}.__getitem__
    r = np.repeat(np.fromiter(map(code, heads), np.int64, len(heads)), lengths)
    c = np.fromiter(map(code, names), np.int64, len(names))
    w = np.array(flat[1::2], dtype=np.float64)
    keep = (r != c) & (w > 0) & np.isfinite(w)
    r, c, w = r[keep], c[keep], w[keep]
    n = len(vocab)
    directed = sp.coo_matrix((w, (r, c)), shape=(n, n)).tocsr()  # sums repeated pairs
    m = (directed + directed.T).tocsr()
    live = np.flatnonzero(np.diff(m.indptr) >= min_count)
    if live.size < n:
        m = m[live][:, live].tocsr()
    return [vocab[i] for i in live.tolist()], m


def procrustes(source: npt.ArrayLike, target: npt.ArrayLike) -> Matrix:
    """The orthogonal ``R`` minimising ``‖source·R − target‖_F`` (rows are items).

    ``R = U·Vᵀ`` from the SVD ``sourceᵀ·target = U·Σ·Vᵀ`` (Schönemann 1966). Rotations and
    reflections alike, so an eigenvector's arbitrary sign costs nothing.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> x, q = rng.normal(size=(10, 3)), np.linalg.qr(rng.normal(size=(3, 3)))[0]
        >>> bool(np.allclose(x @ q @ procrustes(x @ q, x), x))
        True
    """
    u, _, vt = np.linalg.svd(np.asarray(source, np.float64).T @ np.asarray(target, np.float64))
    result: Matrix = u @ vt
    return result


def top_eigenpairs(
    m: sp.csr_matrix,
    k: int,
    *,
    seed: int = 0,
    start: Matrix | None = None,
    iterations: int | None = None,
) -> tuple[Matrix, Matrix]:
    """Eigenvalues (largest magnitude first) and orthonormal eigenvectors (columns) of the
    symmetric ``m``: at most ``min(k, n)`` of them.

    Exact for up to :data:`DENSE_EIGEN_MAX_ITEMS` rows; above, block subspace iteration with
    Rayleigh–Ritz from ``start`` (n × j, say the previous basis) topped up with seeded random
    columns to ``k`` + :data:`OVERSAMPLE`.

    Examples:
        >>> m = sp.csr_matrix(np.diag([1.0, -5.0, 3.0]))
        >>> values, vectors = top_eigenpairs(m, 2)
        >>> values.tolist(), np.abs(vectors).round(6).tolist()
        ([-5.0, 3.0], [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    """
    n = m.shape[0]
    k = min(k, n)
    if n <= max(DENSE_EIGEN_MAX_ITEMS, k + OVERSAMPLE):
        values, vectors = np.linalg.eigh(m.toarray())
    else:
        width = min(k + OVERSAMPLE, n)
        block = np.random.default_rng([seed, n]).standard_normal((n, width))
        warm = start is not None and start.shape[0] == n and start.shape[1] > 0
        if warm:
            assert start is not None
            used = min(start.shape[1], width)
            block[:, :used] = start[:, :used]
        for _ in range(iterations or (WARM_ITERATIONS if warm else COLD_ITERATIONS)):
            block = orthonormalise(m @ block)
        # Rayleigh–Ritz: the best eigenpairs within the span of the block.
        values, small = np.linalg.eigh(block.T @ (m @ block))
        vectors = block @ small
    order = np.argsort(-np.abs(values), kind="stable")[:k]
    return values[order], vectors[:, order]


def orthonormalise(block: Matrix) -> Matrix:
    """An orthonormal basis of the columns of a tall ``block`` (full column rank).

    Cholesky QR, twice (CholQR2): two BLAS-3 passes, several times faster than Householder
    QR on a tall block and as orthogonal for the condition numbers a few iterations reach;
    Householder QR when the Gram matrix is too ill-conditioned to factor.
    """
    try:
        for _ in range(2):
            lower = np.linalg.cholesky(block.T @ block)
            block = sl.solve_triangular(lower, block.T, lower=True, check_finite=False).T
    except np.linalg.LinAlgError:
        return np.asarray(np.linalg.qr(block)[0])
    return block


def embed(values: Matrix, vectors: Matrix, dim: int) -> Matrix:
    """Rows of ``V·√|Λ|``, zero-padded to ``dim`` and L2-normalised (zero rows stay zero)."""
    out = np.zeros((vectors.shape[0], dim), dtype=np.float64)
    width = min(dim, vectors.shape[1])
    out[:, :width] = vectors[:, :width] * np.sqrt(np.abs(values[:width]))
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))
    nonzero = norms > 1e-12
    out[nonzero] /= norms[nonzero, None]
    out[~nonzero] = 0.0
    return out


@dataclass(frozen=True)
class Refresh:
    """What one refresh found."""

    #: Items to publish (new or moved), with their aligned unit float32 vectors, sorted.
    vectors: dict[str, Vector]
    #: Items that got a vector this time (eligible, with a non-empty PPMI row).
    embedded: int
    #: Of ``vectors``: items without a published vector before.
    new: int
    #: Items with a published vector that the alignment used.
    anchors: int
    #: Mean cosine of the anchors' aligned vectors to their published ones (1.0 without any).
    anchor_cosine: float


class OnlineCollab:
    """Item vectors learned from co-visitation rows, refreshed in a stable frame.

    It remembers the vectors published so far (:meth:`publish`, or :meth:`remember` for
    vectors that a restarted process finds already live) and the last basis (to warm-start
    the next refresh). :meth:`refresh` proposes; the caller publishes what it accepts.

    Examples:
        >>> rows = {f"{g}{i}": [(f"{g}{j}", 1.0) for j in range(4) if j != i]
        ...         for g in "ab" for i in range(4)}
        >>> collab = OnlineCollab(dim=2, min_count=2)
        >>> first = collab.refresh(rows)
        >>> sorted(first.vectors)[:3], first.new
        (['a0', 'a1', 'a2'], 8)
        >>> collab.publish(first.vectors)
        >>> v = first.vectors
        >>> bool(v["a0"] @ v["a1"] > 0.9 > 0.1 > abs(v["a0"] @ v["b0"]))
        True
        >>> collab.refresh(rows).vectors  # nothing moved: nothing to publish
        {}
    """

    def __init__(
        self,
        dim: int,
        *,
        min_count: int = 3,
        threshold: float = 0.99,
        seed: int = 0,
        alpha: float = CONTEXT_ALPHA,
    ) -> None:
        if dim < 1:
            raise ValueError("dim must be >= 1")
        self.dim = dim
        self.min_count = min_count
        self.threshold = threshold
        self.seed = seed
        self.alpha = alpha
        #: Vectors as published (what the store and the replicas hold).
        self.published: dict[str, Vector] = {}
        self._basis_ids: dict[str, int] = {}
        self._basis: Matrix | None = None

    def remember(self, vectors: Mapping[str, npt.ArrayLike]) -> None:
        """Take vectors that are already live as published (a restart finds them stored)."""
        for item_id, v in vectors.items():
            x = np.asarray(v, dtype=np.float64)
            norm = float(np.linalg.norm(x))
            if x.shape == (self.dim,) and norm > 0:
                self.published[item_id] = (x / norm).astype(np.float32)

    def publish(self, vectors: Mapping[str, Vector]) -> None:
        """Record vectors the caller published."""
        self.published.update(vectors)

    def forget(self, item_ids: Collection[str]) -> None:
        """Drop items whose published vector is no longer this model's (content took over)."""
        for item_id in item_ids:
            self.published.pop(item_id, None)

    def refresh(self, rows: Rows) -> Refresh:
        """Vectors from the current rows, aligned to the published ones; only what moved."""
        ids, counts = symmetric_counts(rows, min_count=self.min_count)
        if len(ids) < 2:
            return Refresh({}, 0, 0, 0, 1.0)
        weights = ppmi(counts, alpha=self.alpha)
        values, vectors = top_eigenpairs(
            weights, self.dim, seed=self.seed, start=self._warm_start(ids)
        )
        self._basis_ids = {item: n for n, item in enumerate(ids)}
        self._basis = vectors
        emb = embed(values, vectors, self.dim)
        has = np.flatnonzero(emb.any(axis=1))
        ids = [ids[i] for i in has.tolist()]
        emb = emb[has]
        anchors = [n for n, item in enumerate(ids) if item in self.published]
        before = np.zeros_like(emb)  # the published vectors, zero for items without one
        cosine = 1.0
        if anchors:
            before[anchors] = np.stack([self.published[ids[n]] for n in anchors])
            emb = emb @ procrustes(emb[anchors], before[anchors])
            cosine = float(np.einsum("ij,ij->i", emb[anchors], before[anchors]).mean())
        known = np.zeros(len(ids), dtype=bool)
        known[anchors] = True
        moved = ~known | (np.einsum("ij,ij->i", emb, before) < self.threshold)
        vectors = emb.astype(np.float32)
        out = {ids[n]: vectors[n] for n in np.flatnonzero(moved).tolist()}
        new = len(ids) - len(anchors)
        return Refresh(out, len(ids), new, len(anchors), cosine)

    def _warm_start(self, ids: list[str]) -> Matrix | None:
        """The previous basis on the current items (zero rows for items new to it)."""
        if self._basis is None:
            return None
        rows = np.array([self._basis_ids.get(i, -1) for i in ids], dtype=np.int64)
        if not (rows >= 0).any():
            return None
        start = np.zeros((len(ids), self._basis.shape[1]))
        start[rows >= 0] = self._basis[rows[rows >= 0]]
        return start
