"""Nearest item embeddings by cosine similarity: one protocol, an HNSW index and its exact twin.

Vectors are L2-normalised to float32 on the way in, and so are queries. That makes the cosine
a plain dot product: :class:`HnswIndex` uses hnswlib's ``"ip"`` space (distance ``1 − u·v``,
reported back as the score ``u·v``) rather than ``"cosine"``, which would normalise a second
time. :class:`BruteForceIndex` is one matrix–vector product.

Both are safe to share between threads: any number of queries run at once, and a write
(upsert, remove, a new ``ef_search``) waits for them and excludes them. hnswlib needs this: it
must never add and search at once, and ``resize_index`` frees the memory a search is reading.
Queries do not queue behind a stream of inserts: an upsert takes the lock one small chunk at a
time, and the lock lets every query that waited for a chunk run before the next one.

``save(directory, meta)`` writes a whole snapshot into a temp dir inside ``directory``, renames
it to ``snap-…`` and then atomically replaces the ``CURRENT`` file that names it. A crash at
any point leaves ``CURRENT`` naming an older, complete snapshot, or leaves no ``CURRENT``.
``meta`` (for example the Kafka offsets the snapshot covers) is stored with it as JSON.
One process saves to a given directory.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import hnswlib
import numpy as np
import numpy.typing as npt
import orjson

from features.rwlock import PhaseFairLock

Matrix = npt.NDArray[np.float32]
Hit = tuple[str, float]

SNAPSHOT_FORMAT = 1
_CURRENT = "CURRENT"
_HEADER = "index.json"
_SNAP_PREFIX = "snap-"
_TMP_PREFIX = ".tmp-"


@runtime_checkable
class AnnIndex(Protocol):
    """What the serving replica and the candidate sources need from a nearest-neighbour index."""

    dim: int

    def upsert(self, ids: Sequence[str], vectors: npt.ArrayLike) -> None:
        """Add items, or replace the vector of (and un-delete) ids already known."""

    def remove(self, ids: Sequence[str]) -> None:
        """Stop returning these ids; unknown ids are ignored."""

    def query(self, vector: npt.ArrayLike, k: int, exclude: Collection[str] = ()) -> list[Hit]:
        """Up to ``k`` (id, cosine) pairs, best first, never a removed or excluded id."""

    def vectors(self, ids: Sequence[str]) -> Matrix:
        """Unit vectors of ``ids`` as rows; a zero row for an id that is not live."""

    def __len__(self) -> int:
        """The number of live (not removed) items."""

    def __contains__(self, id_: object) -> bool:
        """Whether ``id_`` is live."""

    def save(self, directory: Path, meta: Mapping[str, Any]) -> None:
        """Snapshot the index with ``meta`` (JSON-able), atomically."""

    @classmethod
    def load(cls, directory: Path) -> tuple[Self, dict[str, Any]]:
        """The index and meta of the latest complete snapshot in ``directory``."""


class _Index:
    """The public methods, written once: checks, normalisation, locking, exclusion, snapshots.

    Subclasses fill in ``_upsert``, ``_remove``, ``_get``, ``_search`` (called under the lock, with
    unit float32 vectors and ``0 < want <= len(self)``), ``_dump`` and ``_restore``.
    """

    kind: ClassVar[str]

    #: Items an upsert writes per hold of the write lock: ~1 ms of HNSW inserts on 2 cores.
    WRITE_CHUNK: ClassVar[int] = 16

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be at least 1, got {dim}")
        self.dim = dim
        self._lock = PhaseFairLock()
        self._save_lock = threading.Lock()

    def __len__(self) -> int:
        raise NotImplementedError

    def __contains__(self, id_: object) -> bool:
        raise NotImplementedError

    def upsert(self, ids: Sequence[str], vectors: npt.ArrayLike) -> None:
        """Add items; an id already known gets the new vector and is live again.

        A large batch goes in :attr:`WRITE_CHUNK` items per hold of the write lock, so queries run
        between the chunks instead of waiting for the whole batch: a query sees the batch's
        first chunks, in order, or none of it.
        """
        batch_ids, unit = self._unit_rows(ids, vectors)
        for start in range(0, len(batch_ids), self.WRITE_CHUNK):
            stop = start + self.WRITE_CHUNK
            with self._lock.write():
                self._upsert(batch_ids[start:stop], unit[start:stop])

    def remove(self, ids: Sequence[str]) -> None:
        """Stop returning these ids (deleted or unavailable items); unknown ids are ignored."""
        with self._lock.write():
            self._remove(list(dict.fromkeys(_id_list(ids))))

    def query(self, vector: npt.ArrayLike, k: int, exclude: Collection[str] = ()) -> list[Hit]:
        """Up to ``k`` (id, cosine) pairs, best first (ties by id); [] for a zero vector."""
        q = self._unit_query(vector)
        if q is None or k <= 0:
            return []
        excluded = exclude if isinstance(exclude, AbstractSet) else set(exclude)
        with self._lock.read():
            # Ask for enough that k remain once the excluded ids that are live drop out.
            want = min(k + sum(1 for id_ in excluded if id_ in self), len(self))
            hits = self._search(q, want) if want else []
        hits = [hit for hit in hits if hit[0] not in excluded]
        hits.sort(key=lambda hit: (-hit[1], hit[0]))
        return hits[:k]

    def vectors(self, ids: Sequence[str]) -> Matrix:
        """Unit vectors of ``ids`` as rows; a zero row for an id that is not live."""
        ids = _id_list(ids)
        out: Matrix = np.zeros((len(ids), self.dim), np.float32)
        with self._lock.read():
            rows = [n for n, id_ in enumerate(ids) if id_ in self]
            if rows:
                out[rows] = self._get([ids[n] for n in rows])
        return out

    def save(self, directory: Path, meta: Mapping[str, Any]) -> None:
        """Write a snapshot with ``meta`` into ``directory``; see the module docstring."""
        directory = Path(directory)
        meta = dict(meta)
        orjson.dumps(meta)  # not JSON-able: fail before touching the disk
        directory.mkdir(parents=True, exist_ok=True)
        with self._save_lock:
            tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=directory))
            try:
                with self._lock.read():  # the id map must match the files exactly
                    header = self._dump(tmp)
                    header |= {"format": SNAPSHOT_FORMAT, "kind": self.kind, "dim": self.dim}
                    encoded = orjson.dumps(header | {"meta": meta})
                _write_synced(tmp / _HEADER, encoded)
                for path in tmp.iterdir():
                    _fsync(path)
                final = directory / f"{_SNAP_PREFIX}{time.time_ns()}-{uuid.uuid4().hex[:8]}"
                tmp.rename(final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _write_synced(directory / f"{_CURRENT}.tmp", final.name.encode())
            os.replace(directory / f"{_CURRENT}.tmp", directory / _CURRENT)
            _fsync(directory)
            for old in directory.iterdir():
                if old != final and old.name.startswith((_SNAP_PREFIX, _TMP_PREFIX)):
                    shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, directory: Path) -> tuple[Self, dict[str, Any]]:
        """The index and meta of the snapshot ``directory/CURRENT`` names."""
        directory = Path(directory)
        try:
            name = (directory / _CURRENT).read_text().strip()
        except FileNotFoundError:
            raise FileNotFoundError(f"no snapshot in {directory}") from None
        snapshot = directory / name
        header = orjson.loads((snapshot / _HEADER).read_bytes())
        if header.get("format") != SNAPSHOT_FORMAT or header.get("kind") != cls.kind:
            raise ValueError(
                f"{snapshot} holds a {header.get('kind')!r} snapshot of format "
                f"{header.get('format')!r}, not a {cls.kind!r} one of format {SNAPSHOT_FORMAT}"
            )
        return cls._restore(snapshot, header), header["meta"]

    def _unit_rows(self, ids: Sequence[str], vectors: npt.ArrayLike) -> tuple[list[str], Matrix]:
        id_list = _id_list(ids)
        matrix = np.asarray(vectors, dtype=np.float64)
        if not id_list and matrix.size == 0:
            return [], np.empty((0, self.dim), np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise ValueError(
                f"vectors must have shape (n, {self.dim}) for this dim={self.dim} index, "
                f"got {matrix.shape}"
            )
        if matrix.shape[0] != len(id_list):
            raise ValueError(f"{len(id_list)} ids but {matrix.shape[0]} vectors")
        norms = np.linalg.norm(matrix, axis=1)
        bad = ~np.isfinite(norms) | (norms == 0.0)
        if bad.any():
            bad_id = id_list[int(np.argmax(bad))]
            raise ValueError(f"the vector of {bad_id!r} is zero or not finite")
        last = {id_: row for row, id_ in enumerate(id_list)}  # a repeated id: the last one wins
        keep = list(last.values())
        return list(last), (matrix[keep] / norms[keep, None]).astype(np.float32)

    def _unit_query(self, vector: npt.ArrayLike) -> Matrix | None:
        q = np.asarray(vector, dtype=np.float64)
        if q.shape != (self.dim,):
            raise ValueError(f"the query must be a vector of dimension {self.dim}, got {q.shape}")
        norm = math.sqrt(float(q @ q))
        if not math.isfinite(norm):
            raise ValueError("the query vector is not finite")
        return None if norm == 0.0 else (q / norm).astype(np.float32)

    def _upsert(self, ids: list[str], unit: Matrix) -> None:
        raise NotImplementedError

    def _remove(self, ids: list[str]) -> None:
        raise NotImplementedError

    def _get(self, ids: list[str]) -> Matrix:
        raise NotImplementedError

    def _search(self, q: Matrix, want: int) -> list[Hit]:
        raise NotImplementedError

    def _dump(self, directory: Path) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _restore(cls, snapshot: Path, header: dict[str, Any]) -> Self:
        raise NotImplementedError


class BruteForceIndex(_Index):
    """Exact cosine search over a float32 matrix: the twin that HNSW's recall is measured by.

    Removing an item moves the last row into its place, so rows stay dense and a query is one
    matrix–vector product over live items. Fine alone for catalogs of a few tens of thousands.

    Examples:
        >>> index = BruteForceIndex(dim=3)
        >>> index.upsert(["a", "b", "c"], [[1, 0, 0], [1, 1, 0], [0, 0, 2]])
        >>> [(id_, round(score, 3)) for id_, score in index.query([1, 0.2, 0], k=2)]
        [('a', 0.981), ('b', 0.832)]
        >>> index.remove(["a", "zz"])
        >>> index.query([1, 0, 0], k=5, exclude={"b"})
        [('c', 0.0)]
        >>> len(index), "a" in index
        (2, False)
    """

    kind = "brute-force"

    def __init__(self, dim: int, *, capacity: int = 1024) -> None:
        super().__init__(dim)
        self._vectors: Matrix = np.zeros((max(capacity, 1), dim), np.float32)
        self._ids: list[str] = []  # row -> id
        self._rows: dict[str, int] = {}  # id -> row

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, id_: object) -> bool:
        return isinstance(id_, str) and id_ in self._rows

    def _upsert(self, ids: list[str], unit: Matrix) -> None:
        new = [id_ for id_ in ids if id_ not in self._rows]
        needed = len(self._ids) + len(new)
        if needed > len(self._vectors):
            grown = np.zeros((max(needed, 2 * len(self._vectors)), self.dim), np.float32)
            grown[: len(self._ids)] = self._vectors[: len(self._ids)]
            self._vectors = grown
        for id_ in new:
            self._rows[id_] = len(self._ids)
            self._ids.append(id_)
        self._vectors[[self._rows[id_] for id_ in ids]] = unit

    def _remove(self, ids: list[str]) -> None:
        for id_ in ids:
            row = self._rows.pop(id_, None)
            if row is None:
                continue
            last = len(self._ids) - 1
            moved = self._ids.pop()
            if row != last:
                self._ids[row] = moved
                self._rows[moved] = row
                self._vectors[row] = self._vectors[last]

    def _get(self, ids: list[str]) -> Matrix:
        return self._vectors[[self._rows[id_] for id_ in ids]]

    def _search(self, q: Matrix, want: int) -> list[Hit]:
        scores = self._vectors[: len(self._ids)] @ q
        top = np.argpartition(-scores, want - 1)[:want] if want < len(scores) else range(want)
        return [(self._ids[row], float(scores[row])) for row in top]

    def _dump(self, directory: Path) -> dict[str, Any]:
        np.save(directory / "vectors.npy", self._vectors[: len(self._ids)], allow_pickle=False)
        return {"ids": self._ids}

    @classmethod
    def _restore(cls, snapshot: Path, header: dict[str, Any]) -> Self:
        vectors = np.load(snapshot / "vectors.npy", allow_pickle=False)
        index = cls(header["dim"], capacity=len(header["ids"]))
        index._upsert(list(header["ids"]), vectors.astype(np.float32))
        return index


class HnswIndex(_Index):
    """An hnswlib HNSW graph; build parameters fixed at birth, ``ef_search`` settable any time.

    Each id gets an integer label once and keeps it: ``remove`` marks the label deleted and a
    later upsert of the id rewrites its vector under the same label, which un-deletes it.
    Deleted slots are not reused, so a catalog with heavy churn wants an occasional rebuild.
    Capacity grows by ``growth`` before an upsert would overflow it. ``ef_search`` is saved
    in snapshots and set again on load, since hnswlib does not persist it. An upsert batch
    uses ``num_threads`` hnswlib threads (−1: all cores); each query uses one.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> vectors = rng.normal(size=(200, 8))
        >>> index = HnswIndex(dim=8, max_elements=16, seed=0)
        >>> index.upsert([f"i{n}" for n in range(200)], vectors)
        >>> len(index), index.capacity >= 200
        (200, True)
        >>> index.query(vectors[7], k=3)[0][0]
        'i7'
        >>> index.remove(["i7"])
        >>> "i7" in index, "i7" in [id_ for id_, _ in index.query(vectors[7], k=3)]
        (False, False)
    """

    kind = "hnsw"

    def __init__(
        self,
        dim: int,
        *,
        M: int = 16,
        ef_construction: int = 200,
        ef_search: int = 64,
        seed: int = 0,
        max_elements: int = 1024,
        growth: float = 2.0,
        num_threads: int = -1,
    ) -> None:
        super().__init__(dim)
        if growth <= 1.0:
            raise ValueError(f"growth must be above 1, got {growth}")
        self.M, self.ef_construction, self.seed = M, ef_construction, seed
        self.growth, self.num_threads = growth, num_threads
        self._hnsw = hnswlib.Index(space="ip", dim=dim)
        self._hnsw.init_index(
            max_elements=max(max_elements, 1),
            M=M,
            ef_construction=ef_construction,
            random_seed=seed,
        )
        self.ef_search = ef_search
        self._ids: list[str] = []  # label -> id; labels are never reused
        self._labels: dict[str, int] = {}
        self._deleted: set[int] = set()
        self._copies: Matrix = np.zeros((0, dim), np.float32)  # label -> unit vector

    @property
    def ef_search(self) -> int:
        """The search beam width (query-time recall/speed trade-off), as hnswlib holds it."""
        return int(self._hnsw.ef)

    @ef_search.setter
    def ef_search(self, ef: int) -> None:
        if ef < 1:
            raise ValueError(f"ef_search must be at least 1, got {ef}")
        with self._lock.write():
            self._hnsw.set_ef(ef)

    @property
    def capacity(self) -> int:
        """Slots allocated in the graph, removed items included."""
        return int(self._hnsw.get_max_elements())

    def __len__(self) -> int:
        return len(self._ids) - len(self._deleted)

    def __contains__(self, id_: object) -> bool:
        label = self._labels.get(id_) if isinstance(id_, str) else None
        return label is not None and label not in self._deleted

    def _upsert(self, ids: list[str], unit: Matrix) -> None:
        labels = [self._labels.get(id_) for id_ in ids]
        new = [id_ for id_, label in zip(ids, labels, strict=True) if label is None]
        first = len(self._ids)
        fresh = iter(range(first, first + len(new)))
        label_array = np.array([next(fresh) if lb is None else lb for lb in labels], np.int64)
        # hnswlib refuses (after adding part of the batch) once full, so grow first.
        if first + len(new) > self.capacity:
            self._hnsw.resize_index(max(first + len(new), int(self.capacity * self.growth), 16))
        self._hnsw.add_items(unit, label_array, num_threads=self.num_threads)
        self._keep_copies(label_array, unit)
        for id_ in new:
            self._labels[id_] = len(self._ids)
            self._ids.append(id_)
        self._deleted.difference_update(label_array.tolist())

    def _keep_copies(self, labels: npt.NDArray[np.int64], unit: Matrix) -> None:
        """A plain copy of every vector by label: fancy indexing is ~20× faster than
        hnswlib's get_items for the few hundred candidates a feed scores."""
        needed = int(labels.max()) + 1 if len(labels) else 0
        if needed > len(self._copies):
            grown = np.zeros((max(needed, 2 * len(self._copies), 16), self.dim), np.float32)
            grown[: len(self._copies)] = self._copies
            self._copies = grown
        self._copies[labels] = unit

    def _remove(self, ids: list[str]) -> None:
        for id_ in ids:
            label = self._labels.get(id_)
            if label is not None and label not in self._deleted:  # hnswlib raises on a 2nd delete
                self._hnsw.mark_deleted(label)
                self._deleted.add(label)

    def _get(self, ids: list[str]) -> Matrix:
        return self._copies[[self._labels[id_] for id_ in ids]]

    def _search(self, q: Matrix, want: int) -> list[Hit]:
        hits = self._knn(q, want)
        if hits is None:
            # hnswlib raises rather than return fewer than k when its search reaches fewer
            # than `want` live items (only with `want` near the live count): bisect for the
            # most it can return.
            hits, found, missed = [], 0, want
            while missed - found > 1:
                middle = (found + missed) // 2
                attempt = self._knn(q, middle)
                if attempt is None:
                    missed = middle
                else:
                    hits, found = attempt, middle
        return hits

    def _knn(self, q: Matrix, k: int) -> list[Hit] | None:
        try:
            labels, distances = self._hnsw.knn_query(q, k=k, num_threads=1)
        except RuntimeError:  # "Cannot return the results in a contiguous 2D array"
            return None
        pairs = zip(labels[0].tolist(), distances[0].tolist(), strict=True)
        return [(self._ids[label], 1.0 - distance) for label, distance in pairs]

    def _dump(self, directory: Path) -> dict[str, Any]:
        self._hnsw.save_index(str(directory / "hnsw.bin"))
        params: dict[str, Any] = {
            "M": self.M,
            "ef_construction": self.ef_construction,
            "seed": self.seed,
        }
        params |= {"ef_search": self.ef_search, "growth": self.growth}
        return {"params": params, "ids": self._ids, "deleted": sorted(self._deleted)}

    @classmethod
    def _restore(cls, snapshot: Path, header: dict[str, Any]) -> Self:
        params = header["params"]
        index = cls(header["dim"], max_elements=1, **params)
        index._hnsw = hnswlib.Index(space="ip", dim=header["dim"])
        index._hnsw.load_index(str(snapshot / "hnsw.bin"))
        if index._hnsw.element_count != len(header["ids"]):
            raise ValueError(f"{snapshot}: the graph and the id map disagree on the item count")
        index.ef_search = params["ef_search"]  # hnswlib does not persist ef
        index._ids = list(header["ids"])
        index._labels = {id_: label for label, id_ in enumerate(index._ids)}
        index._deleted = set(header["deleted"])
        live = [label for label in range(len(index._ids)) if label not in index._deleted]
        if live:
            stored = index._hnsw.get_items(live, return_type="numpy")
            index._keep_copies(np.array(live, np.int64), np.asarray(stored, np.float32))
        return index


def _id_list(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, str):
        raise TypeError("ids must be a sequence of ids, not a single str")
    return list(ids)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
