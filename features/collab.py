"""Collaborative item embeddings from co-consumption: windowed co-occurrence → PPMI → SVD.

Items consumed close together in the same user's (or session's) history get similar vectors.
This is the count-based twin of item2vec (Levy & Goldberg, "Neural word embedding as implicit
matrix factorization", 2014, and "Improving distributional similarity with lessons learned
from word embeddings", 2015): skip-gram with negative sampling factorises a shifted PMI
matrix, and a truncated SVD of the positive PMI with context-distribution smoothing
(α = 0.75) does about as well, deterministically and without epochs.

Pure batch maths, no I/O: a job reads an interaction log, calls
:func:`train_item_embeddings` and publishes the vectors like any other item embedding.
Feed it positive interactions only (views, clicks, likes, purchases); a skip is not
co-consumption.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.sparse.linalg import svds

Vector = npt.NDArray[np.float32]

#: Context-distribution smoothing: context counts are raised to this power before they
#: become probabilities, which lifts rare contexts and damps PMI's bias towards them.
CONTEXT_ALPHA = 0.75

#: Up to this many items, the SVD is a dense LAPACK one (exact, and fast at this size).
DENSE_SVD_MAX_ITEMS = 1500


def item_cooccurrence(
    interactions: Iterable[tuple[str, str, int]],
    *,
    window: int,
    min_count: int = 1,
    max_items: int | None = None,
) -> tuple[list[str], sp.csr_matrix]:
    """Item ids (sorted) and their symmetric co-occurrence counts within ``window`` positions.

    Vocabulary: items with at least ``min_count`` interactions; with ``max_items``, only the
    most frequent of those (ties by id). Other items are removed from the histories *before*
    windowing, as word2vec does with rare words. Each history is sorted by (time, item id),
    immediate repeats of an item (a view then a click) are collapsed to one position, and
    every pair of positions at distance 1..``window`` counts 1 in both directions. An item
    never co-occurs with itself.

    Examples:
        >>> log = [("u", "a", 1), ("u", "b", 2), ("u", "b", 3), ("u", "c", 4), ("v", "c", 1)]
        >>> items, counts = item_cooccurrence(log, window=1)
        >>> items
        ['a', 'b', 'c']
        >>> counts.toarray().tolist()
        [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    if min_count < 1:
        raise ValueError("min_count must be >= 1")
    if max_items is not None and max_items < 1:
        raise ValueError("max_items must be >= 1")
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    for user, item, ts in interactions:
        users.append(user)
        items.append(item)
        times.append(ts)
    freq = Counter(items)
    kept = [i for i, n in freq.items() if n >= min_count]
    if max_items is not None and len(kept) > max_items:
        kept = sorted(kept, key=lambda i: (-freq[i], i))[:max_items]
    vocab = sorted(kept)
    code = {item: c for c, item in enumerate(vocab)}
    n = len(vocab)
    item_codes = np.array([code.get(i, -1) for i in items], dtype=np.int64)
    user_index: dict[str, int] = {}
    user_codes = np.array([user_index.setdefault(u, len(user_index)) for u in users], np.int64)
    ts_arr = np.array(times, dtype=np.int64)
    keep = item_codes >= 0
    item_codes, user_codes, ts_arr = item_codes[keep], user_codes[keep], ts_arr[keep]
    order = np.lexsort((item_codes, ts_arr, user_codes))
    seq, owner = item_codes[order], user_codes[order]
    if seq.size:
        fresh = np.ones(seq.size, dtype=bool)
        fresh[1:] = (seq[1:] != seq[:-1]) | (owner[1:] != owner[:-1])
        seq, owner = seq[fresh], owner[fresh]
    rows: list[npt.NDArray[np.int64]] = []
    cols: list[npt.NDArray[np.int64]] = []
    for d in range(1, min(window, max(seq.size - 1, 0)) + 1):
        pair = (owner[d:] == owner[:-d]) & (seq[d:] != seq[:-d])
        a, b = seq[:-d][pair], seq[d:][pair]
        rows += [a, b]
        cols += [b, a]
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    counts = sp.coo_matrix((np.ones(r.size), (r, c)), shape=(n, n)).tocsr()
    counts.sum_duplicates()
    return vocab, counts


def ppmi(counts: sp.spmatrix, *, alpha: float = CONTEXT_ALPHA) -> sp.csr_matrix:
    """Positive PMI of a co-occurrence count matrix, with context-distribution smoothing.

    ``PPMI(w, c) = max(0, log(#(w,c) · Z / (#(w) · #(c)^α)))`` with ``#(w)`` the row sums,
    ``#(c)`` the column sums and ``Z = Σ_c #(c)^α``; with ``α = 1`` this is plain PMI
    ``log(P(w,c) / (P(w)·P(c)))``. Zero and negative entries are dropped.

    Examples:
        >>> c = sp.csr_matrix(np.array([[0, 3, 1, 0], [3, 0, 0, 0], [1, 0, 0, 2], [0, 0, 2, 0]]))
        >>> p = ppmi(c, alpha=1.0)
        >>> np.round(p.toarray() / np.log(2), 4).tolist()  # in bits: log2 3 and log2 4
        [[0.0, 1.585, 0.0, 0.0], [1.585, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0], [0.0, 0.0, 2.0, 0.0]]
    """
    m = sp.csr_matrix(counts, dtype=np.float64)
    m.sum_duplicates()
    row_sums = np.asarray(m.sum(axis=1)).ravel()
    ctx = np.asarray(m.sum(axis=0)).ravel() ** alpha
    coo = m.tocoo()
    nz = coo.data > 0
    r, c, v = coo.row[nz], coo.col[nz], coo.data[nz]
    pmi = np.log(v * ctx.sum() / (row_sums[r] * ctx[c]))
    pos = pmi > 0
    return sp.csr_matrix((pmi[pos], (r[pos], c[pos])), shape=m.shape)


def _truncated_svd(
    m: sp.csr_matrix, k: int, seed: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Top ``min(k, rank bound)`` left singular vectors and values, largest first, signs fixed."""
    n = min(m.shape)
    if n <= max(DENSE_SVD_MAX_ITEMS, k + 1):  # small, or ARPACK could not give k (< n) values
        u, s, _ = np.linalg.svd(m.toarray(), full_matrices=False)
        u, s = u[:, :k], s[:k]
    else:
        v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, n)
        u, s, _ = svds(m, k=k, v0=v0, solver="arpack", random_state=seed)
        order = np.argsort(-s, kind="stable")
        u, s = u[:, order], s[order]
    # A singular vector's sign is arbitrary: make each column's largest entry positive.
    pivot = np.abs(u).argmax(axis=0)
    u = u * np.where(u[pivot, np.arange(u.shape[1])] < 0, -1.0, 1.0)
    return u, s


def train_item_embeddings(
    interactions: Iterable[tuple[str, str, int]],
    *,
    dim: int,
    window: int = 5,
    min_count: int = 2,
    seed: int = 0,
    max_items: int | None = None,
) -> dict[str, Vector]:
    """Unit float32 item vectors of length ``dim`` from ``(user_or_session, item, ts_ms)``.

    :func:`item_cooccurrence` → :func:`ppmi` → truncated SVD, and each item's vector is its
    row of ``U·√Σ``, L2-normalised. With ``n`` items, at most ``n`` components exist: with
    ``n ≤ dim`` the vectors are exact and zero-padded to ``dim``. Items that never co-occur
    with another item (or whose PPMI row is empty) get no vector: they have nothing to be
    similar to. The input order does not matter, and a seed gives the same bytes every run.

    Examples:
        >>> log = [(u, i, t) for u, items in [("u1", "abc"), ("u2", "abc"), ("u3", "xyz"),
        ...                                    ("u4", "xyz")] for t, i in enumerate(items)]
        >>> vecs = train_item_embeddings(log, dim=4, window=2)
        >>> sorted(vecs), vecs["a"].dtype, vecs["a"].shape
        (['a', 'b', 'c', 'x', 'y', 'z'], dtype('float32'), (4,))
        >>> bool(vecs["a"] @ vecs["b"] > 0.5 > abs(vecs["a"] @ vecs["x"]))
        True
    """
    if dim < 1:
        raise ValueError("dim must be >= 1")
    items, counts = item_cooccurrence(
        interactions, window=window, min_count=min_count, max_items=max_items
    )
    if not items:
        return {}
    m = ppmi(counts)
    live = np.flatnonzero(np.diff(m.indptr) > 0)
    if live.size == 0:
        return {}
    m = m[live]  # rows = items with a PPMI context; columns stay the full vocabulary
    u, s = _truncated_svd(m, dim, seed)
    emb = np.zeros((live.size, dim), dtype=np.float64)
    emb[:, : u.shape[1]] = u * np.sqrt(s)
    norms = np.sqrt(np.einsum("ij,ij->i", emb, emb))
    out: dict[str, Vector] = {}
    for row, norm in enumerate(norms.tolist()):
        if norm > 1e-12 and math.isfinite(norm):
            out[items[live[row]]] = (emb[row] / norm).astype(np.float32)
    return out
