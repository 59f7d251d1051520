"""Item content embeddings and decayed weighted-mean session and user embeddings.

Two pieces of pure maths, no I/O:

* :func:`content_embedding` turns an item's category, creator, tags and text into a unit
  vector by signed feature hashing. It needs no training and no catalog, so the worker can
  embed a new item the moment it is announced. Equal content gives equal bytes in every
  process: tokens are hashed with keyed ``blake2b`` (never Python's salted ``hash()``) and
  summed in double precision in a fixed order.
* :class:`EmbeddingState` with :func:`update`, :func:`update_many` and :func:`vector` keep the
  exponentially decayed, weighted mean of the embeddings of the items a session or a user
  interacted with (GUIDE §2.3)::

      total(t) = Σ wᵢ · e^{−λ(t − tᵢ)} · xᵢ        mass(t) = Σ |wᵢ| · e^{−λ(t − tᵢ)}

  held at the reference time ``t = last_ts_ms``. Decay scales every term alike, so the
  *direction* ``total / ‖total‖`` needs no "now" to be read; only ``mass`` depends on it.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import overload

import numpy as np
import numpy.typing as npt

from features.decay import decay_rate

Vector = npt.NDArray[np.float32]

# ---------------------------------------------------------------------------------------------
# Content embedding
# ---------------------------------------------------------------------------------------------

#: Weight of each group of content tokens. Each group is scaled to this L2 norm (before the
#: final normalisation) however many tokens it has, so 40 words cannot drown one category:
#: category and tags say what an item *is*; the creator is a strong but narrower cue; free
#: text is the noisiest. Two items sharing only their category have cosine ≈ 0.4, sharing
#: category and tags ≈ 0.7–0.8 (with different creators and texts), unrelated ones ≈ 0 ± 0.13
#: at dim 64.
CATEGORY_WEIGHT = 1.0
TAGS_WEIGHT = 1.0
CREATOR_WEIGHT = 0.5
TEXT_WEIGHT = 0.5

#: Non-zeros per token: each token is a sparse ±1/√4 vector on 4 distinct hashed dimensions
#: (a sparse Johnson–Lindenstrauss projection). Unrelated tokens then have cosine spread like
#: N(0, 1/dim) instead of "0, or ±1 on a collision" with a single hashed dimension.
HASHES_PER_TOKEN = 4

#: blake2b personalisation. Changing it (or the token spelling) changes every content vector,
#: so treat it as a model version: re-embed the catalog if it ever moves.
HASH_PERSON = b"streamrec.cemb1"

#: Words shorter than this are dropped (single letters carry no topic).
MIN_WORD_LEN = 2

#: A few English function words that would otherwise make unrelated texts look alike.
STOP_WORDS = frozenset(
    "an and are as at be but by for from has have he her his how in is it its of on or "
    "our she so than that the their them there they this to was we were what when which who "
    "will with you your".split()
)

_WORD = re.compile(r"\w+")
#: Tokens remembered per dimension before the table starts over (≈ 3 MB at the bound).
_TABLE_CAPACITY = 1 << 16


def _hash_token(token: str, dim: int) -> tuple[list[int], list[float]]:
    """Dimensions and signed values (unit norm) of one token's hashed vector."""
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=32, person=HASH_PERSON).digest()
    want = min(HASHES_PER_TOKEN, dim)
    dims: list[int] = []
    signs: list[float] = []
    for offset in range(0, 32, 4):  # eight 32-bit draws; the first `want` distinct dims win
        u = int.from_bytes(digest[offset : offset + 4], "little")
        d = (u >> 1) % dim
        if d not in dims:
            dims.append(d)
            signs.append(1.0 if u & 1 else -1.0)
            if len(dims) == want:
                break
    scale = 1.0 / math.sqrt(len(dims))
    return dims, [s * scale for s in signs]


class _TokenTable:
    """Token → row of hashed dims/values for one dimension: each token is hashed once.

    Rows are padded to :data:`HASHES_PER_TOKEN` with value 0.0 on dim 0. A full table starts
    over; that only costs re-hashing, never changes a vector. The lock keeps concurrent
    callers (threads of one server) from reading rows while the table grows or restarts.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.lock = threading.Lock()
        self._clear(256)

    def _clear(self, rows: int) -> None:
        self.ids: dict[str, int] = {}
        self.dims = np.zeros((rows, HASHES_PER_TOKEN), dtype=np.intp)
        self.values = np.zeros((rows, HASHES_PER_TOKEN), dtype=np.float64)

    def rows(self, tokens: Sequence[str]) -> npt.NDArray[np.intp]:
        """Row numbers of ``tokens``, hashing the new ones (call with the lock held)."""
        get = self.ids.get
        rows = [get(t, -1) for t in tokens]
        if -1 in rows:
            if len(self.ids) + len(tokens) > _TABLE_CAPACITY:
                self._clear(self.dims.shape[0])
                rows = [-1] * len(tokens)
            for i, token in enumerate(tokens):
                if rows[i] == -1:
                    rows[i] = self._add(token)
        return np.array(rows, dtype=np.intp)

    def _add(self, token: str) -> int:
        row = self.ids.get(token)
        if row is not None:  # repeated within one call
            return row
        row = len(self.ids)
        if row == self.dims.shape[0]:
            self.dims = np.concatenate([self.dims, np.zeros_like(self.dims)])
            self.values = np.concatenate([self.values, np.zeros_like(self.values)])
        dims, values = _hash_token(token, self.dim)
        self.dims[row, : len(dims)] = dims
        self.values[row, : len(values)] = values
        self.ids[token] = row
        return row


_TABLES: dict[int, _TokenTable] = {}


def _clean(value: str | None) -> str:
    return value.strip().casefold() if value else ""


def content_tokens(
    *, category: str | None, creator: str | None, tags: Sequence[str], text: str | None
) -> tuple[list[str], list[float]]:
    """The hash tokens :func:`content_embedding` sums and their weights, in a fixed order.

    Tokens are ``cat:<category>``, ``creator:<creator>``, ``tag:<tag>`` and bare words (a
    word never holds ``:``, so it cannot collide with the others). Category, tags and text
    are stripped and case-folded; the creator is only stripped (it is an identifier). Tags are
    de-duplicated and sorted; each of ``n`` tags weighs ``TAGS_WEIGHT/√n``. Words are runs of
    ``\\w`` of at least :data:`MIN_WORD_LEN` characters, minus :data:`STOP_WORDS`, weighted
    ``1 + ln(term count)`` and scaled so the words' weights have L2 norm ``TEXT_WEIGHT``.

    Examples:
        >>> tokens, weights = content_tokens(category="News", creator=None, tags=["b", "A", "a"],
        ...                                  text="The cat, the CAT and a dog")
        >>> tokens
        ['cat:news', 'tag:a', 'tag:b', 'cat', 'dog']
        >>> [round(w, 4) for w in weights]
        [1.0, 0.7071, 0.7071, 0.4305, 0.2543]
    """
    tokens: list[str] = []
    weights: list[float] = []
    cat = _clean(category)
    if cat:
        tokens.append("cat:" + cat)
        weights.append(CATEGORY_WEIGHT)
    who = creator.strip() if creator else ""
    if who:
        tokens.append("creator:" + who)
        weights.append(CREATOR_WEIGHT)
    tag_set = sorted({t for t in map(_clean, tags) if t})
    if tag_set:
        tokens.extend("tag:" + t for t in tag_set)
        weights.extend([TAGS_WEIGHT / math.sqrt(len(tag_set))] * len(tag_set))
    if text:
        tf = Counter(_WORD.findall(text.casefold()))
        words = [w for w in tf if len(w) >= MIN_WORD_LEN and w not in STOP_WORDS]
        if words:
            raw = [1.0 if (n := tf[w]) == 1 else 1.0 + math.log(n) for w in words]
            scale = TEXT_WEIGHT / math.sqrt(math.fsum(v * v for v in raw))
            tokens.extend(words)
            weights.extend(v * scale for v in raw)
    return tokens, weights


def content_embedding(
    *, dim: int, category: str | None, creator: str | None, tags: Sequence[str], text: str | None
) -> Vector:
    """A deterministic unit float32 vector of an item's content; all zeros only if it has none.

    Each token of :func:`content_tokens` is hashed to a sparse signed unit vector, and the
    weighted sum is L2-normalised. Items that share their category and tags therefore point
    the same way. The sum is a sequential ``bincount`` in token order and the norm an exact
    ``fsum``, so equal content gives equal bytes on every machine.

    Examples:
        >>> a = content_embedding(dim=64, category="sport", creator="c1", tags=["football"],
        ...                       text="Late goal wins the derby")
        >>> b = content_embedding(dim=64, category="sport", creator="c2", tags=["football"],
        ...                       text="Injury news before the cup final")
        >>> c = content_embedding(dim=64, category="cooking", creator="c3", tags=["pasta"],
        ...                       text="A quick weeknight carbonara")
        >>> a.dtype, a.shape, round(float(a @ a), 6)
        (dtype('float32'), (64,), 1.0)
        >>> bool(a @ b > 0.6 > abs(a @ c))
        True
        >>> not content_embedding(dim=8, category=None, creator=" ", tags=[], text="").any()
        True
    """
    if dim < 1:
        raise ValueError("dim must be >= 1")
    tokens, weights = content_tokens(category=category, creator=creator, tags=tags, text=text)
    if not tokens:
        return np.zeros(dim, dtype=np.float32)
    table = _TABLES.get(dim) or _TABLES.setdefault(dim, _TokenTable(dim))
    w = np.array(weights, dtype=np.float64)[:, None]
    with table.lock:
        rows = table.rows(tokens)
        dims, values = table.dims[rows], table.values[rows]
    acc = np.bincount(dims.ravel(), (values * w).ravel(), minlength=dim)
    norm = math.sqrt(math.fsum((acc * acc).tolist()))
    if norm < 1e-9:
        # Distinct tokens cancelled exactly (only plausible at tiny dims): fall back to one
        # token for the whole content, which is non-zero by construction.
        fallback_dims, fallback_values = _hash_token("all:" + "\x1f".join(tokens), dim)
        acc = np.zeros(dim, dtype=np.float64)
        acc[fallback_dims] = fallback_values
        norm = 1.0
    return (acc / norm).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Decayed weighted-mean embeddings (sessions and users)
# ---------------------------------------------------------------------------------------------

#: How much each interaction type pulls a session or user embedding towards the item
#: (negative: pushes it away). Intent grows from a passive view to a purchase; ``share`` sits
#: between like and click. Skip is a mild "not this", dismiss an explicit one. Unknown types
#: should be treated as 0 (ignored) by callers.
EMBEDDING_EVENT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "purchase": 4.0,
        "add_to_cart": 2.5,
        "like": 2.0,
        "share": 1.5,
        "click": 1.0,
        "view": 0.25,
        "skip": -0.5,
        "dismiss": -1.0,
    }
)

#: Serialised header: int64 last_ts_ms, float64 mass, uint32 count, little-endian; then
#: float32[dim] total, little-endian.
_HEADER = struct.Struct("<qdI")
_MAX_COUNT = 2**32 - 1
#: ``vector`` is None when ‖total‖ < this · mass (everything cancelled) or mass ≈ 0.
_REL_NORM_EPS = 1e-6
_MIN_MASS = 1e-30


@dataclass(frozen=True, eq=False, slots=True)
class EmbeddingState:
    """A decayed weighted sum of item vectors, as of ``last_ts_ms``. Treat it as immutable.

    ``total`` is float32 ``Σ wᵢ·e^{−λ(t−tᵢ)}·xᵢ``, ``mass`` is ``Σ |wᵢ|·e^{−λ(t−tᵢ)}``, both at
    ``t = last_ts_ms`` (the newest event time applied), ``count`` the events in the state.

    Examples:
        >>> x = np.array([1.0, 0.0], dtype=np.float32)
        >>> s = update(None, x, 2.0, 1_000, half_life_s=60.0, session_gap_s=None)
        >>> s.mass, s.last_ts_ms, s.count, s.dim
        (2.0, 1000, 1, 2)
        >>> EmbeddingState.from_bytes(s.to_bytes(), dim=2).total.tolist()
        [2.0, 0.0]
        >>> len(s.to_bytes())
        28
    """

    total: Vector
    mass: float
    last_ts_ms: int
    count: int

    @property
    def dim(self) -> int:
        return int(self.total.shape[0])

    def to_bytes(self) -> bytes:
        """Header (int64 last_ts_ms, float64 mass, uint32 count) then float32[dim] total."""
        head = _HEADER.pack(self.last_ts_ms, self.mass, min(self.count, _MAX_COUNT))
        return head + self.total.astype("<f4", copy=False).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, dim: int) -> EmbeddingState:
        """Inverse of :meth:`to_bytes`; ValueError on a wrong length or non-finite numbers."""
        expected = _HEADER.size + 4 * dim
        if dim < 1 or len(data) != expected:
            raise ValueError(f"embedding state is {len(data)} bytes, expected {expected}")
        last_ts_ms, mass, count = _HEADER.unpack_from(data)
        total = np.frombuffer(data, dtype="<f4", count=dim, offset=_HEADER.size)
        if not (math.isfinite(mass) and mass >= 0.0 and np.isfinite(total).all()):
            raise ValueError("embedding state holds a non-finite or negative number")
        return cls(total.astype(np.float32), mass, last_ts_ms, count)


def vector(state: EmbeddingState | None) -> Vector | None:
    """The state's direction: ``total / ‖total‖`` as float32, or None if there is none.

    None when there is no state, when the mass has decayed to nothing, or when positive and
    negative events cancelled (‖total‖ tiny next to the mass).
    """
    if state is None or state.mass < _MIN_MASS:
        return None
    total = state.total.astype(np.float64)
    norm = float(np.sqrt(total @ total))
    if not norm > _REL_NORM_EPS * state.mass:
        return None
    return (total / norm).astype(np.float32)


def _checked_vector(item_vector: npt.ArrayLike, state: EmbeddingState | None) -> Vector:
    x = np.asarray(item_vector, dtype=np.float32)
    if x.ndim != 1 or (state is not None and x.shape[0] != state.dim):
        want = f"({state.dim},)" if state is not None else "1-D"
        raise ValueError(f"item vector has shape {x.shape}, expected {want}")
    return x


def update(
    state: EmbeddingState | None,
    item_vector: npt.ArrayLike,
    weight: float,
    ts_ms: int,
    *,
    half_life_s: float,
    session_gap_s: float | None = None,
) -> EmbeddingState:
    """Fold one event (item vector, weight, event time) into the state.

    Rules, with ``last = state.last_ts_ms``:

    * **New session:** with a ``session_gap_s`` and ``ts − last > gap``, the old state is
      dropped and the event starts a fresh one (``count == 1``).
    * **Stale event:** with a ``session_gap_s`` and ``last − ts > gap``, the event belongs to
      an earlier session that is already gone, so the state is returned unchanged.
    * **Otherwise** the state is decayed to ``ref = max(last, ts)`` and the event is added
      with its own decay ``e^{−λ(ref − ts)}``. The reference time never moves backwards (no
      "un-decay", so no growth of old terms), and an event that arrives late gets exactly the
      weight it would have had in order: within a session the result does not depend on the
      arrival order. ``mass`` adds ``|w|``; a negative ``w`` (skip, dismiss) pushes away.

    A zero weight still counts as activity: it advances ``last_ts_ms`` and ``count``.

    Examples:
        >>> x1, x2 = np.array([1, 0], np.float32), np.array([0, 1], np.float32)
        >>> s = update(None, x1, 1.0, 0, half_life_s=10.0)
        >>> s = update(s, x2, 1.0, 10_000, half_life_s=10.0)  # one half-life later
        >>> s.total.tolist(), s.mass, s.count
        ([0.5, 1.0], 1.5, 2)
        >>> update(s, x1, 1.0, 50_000, half_life_s=10.0, session_gap_s=30.0).count  # new session
        1
    """
    if not math.isfinite(weight):
        raise ValueError(f"weight must be finite, got {weight}")
    rate = decay_rate(half_life_s)
    x = _checked_vector(item_vector, state)
    gap_ms = None if session_gap_s is None else session_gap_s * 1000.0
    if state is None or (gap_ms is not None and ts_ms - state.last_ts_ms > gap_ms):
        return EmbeddingState((np.float32(weight) * x).astype(np.float32), abs(weight), ts_ms, 1)
    if gap_ms is not None and state.last_ts_ms - ts_ms > gap_ms:
        return state
    ref = max(state.last_ts_ms, ts_ms)
    old = math.exp(-rate * (ref - state.last_ts_ms) / 1000.0)
    new = math.exp(-rate * (ref - ts_ms) / 1000.0)
    total = state.total * np.float32(old) + np.float32(weight * new) * x
    mass = state.mass * old + abs(weight) * new
    return EmbeddingState(total.astype(np.float32), mass, ref, min(state.count + 1, _MAX_COUNT))


@overload
def update_many(
    state: EmbeddingState,
    vectors: npt.ArrayLike,
    weights: npt.ArrayLike,
    ts_ms: npt.ArrayLike,
    *,
    half_life_s: float,
    session_gap_s: float | None = None,
) -> EmbeddingState: ...
@overload
def update_many(
    state: None,
    vectors: npt.ArrayLike,
    weights: npt.ArrayLike,
    ts_ms: npt.ArrayLike,
    *,
    half_life_s: float,
    session_gap_s: float | None = None,
) -> EmbeddingState | None: ...
def update_many(
    state: EmbeddingState | None,
    vectors: npt.ArrayLike,
    weights: npt.ArrayLike,
    ts_ms: npt.ArrayLike,
    *,
    half_life_s: float,
    session_gap_s: float | None = None,
) -> EmbeddingState | None:
    """Fold a batch of one key's events (``n × dim`` vectors, ``n`` weights and times) at once.

    The events are first sorted by time (stable), and the result equals calling :func:`update`
    on them in that order. Sorting costs nothing inside a session (the result there is
    order-free) and gives the right session boundaries when a batch arrives slightly out of
    order. Only the last session in the batch survives, so after locating its start the sum
    is one vectorised expression ``Σ wᵢ·e^{−λ(t_end − tᵢ)}·xᵢ``. Returns ``state`` when the
    batch is empty (None stays None).

    Examples:
        >>> xs = np.eye(2, dtype=np.float32)
        >>> s = update_many(None, xs, [1.0, 1.0], [10_000, 0], half_life_s=10.0)
        >>> s.total.tolist(), s.mass, s.last_ts_ms, s.count
        ([1.0, 0.5], 1.5, 10000, 2)
    """
    rate = decay_rate(half_life_s)
    xs = np.asarray(vectors, dtype=np.float32)
    ws = np.asarray(weights, dtype=np.float64)
    ts = np.asarray(ts_ms, dtype=np.int64)
    n = ts.shape[0] if ts.ndim == 1 else -1
    if xs.ndim != 2 or xs.shape[0] != n or ws.shape != (n,):
        raise ValueError(
            f"need vectors (n, dim), weights (n,), ts_ms (n,); got {xs.shape}, {ws.shape}, "
            f"{ts.shape}"
        )
    if state is not None and xs.shape[1] != state.dim:
        raise ValueError(f"vectors have dim {xs.shape[1]}, state has {state.dim}")
    if not np.isfinite(ws).all():
        raise ValueError("weights must be finite")
    if n == 0:
        return state
    order = np.argsort(ts, kind="stable")
    xs, ws, ts = xs[order], ws[order], ts[order]
    base, start = state, 0
    if session_gap_s is not None:
        gap_ms = session_gap_s * 1000.0
        prev = np.empty_like(ts)  # the state's newest time before each event is applied
        prev[1:] = ts[:-1]
        # The first event compares with the state's newest time (if any), not with itself.
        prev[0] = ts[0] if base is None else base.last_ts_ms
        if base is not None:
            # Sorted, so stale events (older than last − gap) form a prefix.
            start = int(np.count_nonzero(base.last_ts_ms - ts > gap_ms))
            np.maximum(prev, base.last_ts_ms, out=prev)
        resets = np.flatnonzero(ts[start:] - prev[start:] > gap_ms)
        if base is None or resets.size:
            start += int(resets[-1]) if resets.size else 0
            base = None
    if start == n:
        return base
    xs, ws, ts = xs[start:], ws[start:], ts[start:]
    ref = int(ts[-1]) if base is None else max(base.last_ts_ms, int(ts[-1]))
    decay = np.exp(-rate * (ref - ts).astype(np.float64) / 1000.0)
    total = (ws * decay).astype(np.float32) @ xs
    mass = math.fsum(np.abs(ws) * decay)
    count = ts.shape[0]
    if base is not None:
        old = math.exp(-rate * (ref - base.last_ts_ms) / 1000.0)
        total = total + base.total * np.float32(old)
        mass += base.mass * old
        count += base.count
    return EmbeddingState(total.astype(np.float32), mass, ref, min(count, _MAX_COUNT))
