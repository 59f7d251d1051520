"""One contract suite for every AnnIndex: HNSW must behave like its exact twin."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from features.ann import AnnIndex, BruteForceIndex, HnswIndex

DIM = 4
E = np.eye(DIM)
# Cosines to the query E[0]: a 1, b 1/√2, c 0, d −1.
ITEMS = {"a": E[0], "b": E[0] + E[1], "c": E[1], "d": -E[0]}

Factory = Callable[[], AnnIndex]


@pytest.fixture(params=["brute-force", "hnsw"])
def make(request: pytest.FixtureRequest) -> Factory:
    if request.param == "hnsw":
        # A tiny start capacity, so the suite also runs through resize_index.
        return lambda: HnswIndex(DIM, M=8, ef_construction=64, max_elements=2, seed=0)
    return lambda: BruteForceIndex(DIM, capacity=2)


@pytest.fixture
def index(make: Factory) -> AnnIndex:
    index = make()
    index.upsert(list(ITEMS), np.array(list(ITEMS.values())))
    return index


def ids(hits: list[tuple[str, float]]) -> list[str]:
    return [id_ for id_, _ in hits]


def test_is_an_ann_index(index: AnnIndex) -> None:
    assert isinstance(index, AnnIndex)
    assert index.dim == DIM


def test_query_ranks_by_cosine_best_first(index: AnnIndex) -> None:
    hits = index.query(E[0], k=4)
    assert ids(hits) == ["a", "b", "c", "d"]
    assert [s for _, s in hits] == pytest.approx([1.0, 2**-0.5, 0.0, -1.0], abs=1e-6)
    # Cosine ignores the query's length, and k cuts the list.
    assert ids(index.query(5 * E[0], k=2)) == ["a", "b"]
    assert ids(index.query(E[1], k=1)) == ["c"]


def test_upsert_of_a_known_id_replaces_its_vector(index: AnnIndex) -> None:
    index.upsert(["a"], [E[2]])
    assert len(index) == 4
    assert ids(index.query(E[0], k=4)) == ["b", "a", "c", "d"]  # a ties c at 0: by id
    assert index.query(E[2], k=1) == [("a", pytest.approx(1.0, abs=1e-6))]


def test_a_repeated_id_in_one_batch_keeps_the_last_vector(make: Factory) -> None:
    index = make()
    index.upsert(["x", "y", "x"], [E[0], E[1], E[2]])
    assert len(index) == 2
    assert ids(index.query(E[2], k=1)) == ["x"]


def test_remove_hides_an_item_and_upsert_brings_it_back(index: AnnIndex) -> None:
    index.remove(["a", "nope"])
    index.remove(["a"])  # twice is fine
    assert "a" not in index and len(index) == 3
    assert ids(index.query(E[0], k=4)) == ["b", "c", "d"]

    index.upsert(["a"], [E[0]])
    assert "a" in index and len(index) == 4
    assert ids(index.query(E[0], k=1)) == ["a"]

    index.remove(["a"])  # and removed again after coming back
    index.upsert(["a"], [E[3]])  # back with a new vector
    assert ids(index.query(E[3], k=1)) == ["a"]


def test_vectors_are_the_unit_vectors_of_live_ids(index: AnnIndex) -> None:
    index.upsert(["a", "b"], [[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    index.remove(["b"])
    rows = index.vectors(["b", "a", "nope"])
    assert rows.shape == (3, DIM)
    assert rows[1].tolist() == pytest.approx([0.6, 0.8, 0.0, 0.0], abs=1e-6)
    assert not rows[0].any() and not rows[2].any()


def test_exclude_skips_ids_and_still_fills_k(index: AnnIndex) -> None:
    assert ids(index.query(E[0], k=2, exclude={"a"})) == ["b", "c"]
    assert ids(index.query(E[0], k=2, exclude=["a", "b", "unknown"])) == ["c", "d"]
    assert index.query(E[0], k=2, exclude=list(ITEMS)) == []


def test_k_beyond_the_live_count_returns_every_live_item(index: AnnIndex) -> None:
    assert ids(index.query(E[0], k=10)) == ["a", "b", "c", "d"]
    index.remove(["b", "d"])
    assert ids(index.query(E[0], k=10)) == ["a", "c"]
    assert ids(index.query(E[0], k=10, exclude={"a"})) == ["c"]


def test_empty_index_zero_query_and_zero_k_return_nothing(make: Factory) -> None:
    index = make()
    assert len(index) == 0 and "a" not in index
    assert index.query(E[0], k=3) == []
    index.upsert(["a"], [E[0]])
    assert index.query(np.zeros(DIM), k=3) == []
    assert index.query(E[0], k=0) == []
    index.remove(["a"])
    assert index.query(E[0], k=3) == []


def test_bad_input_raises_naming_the_problem(index: AnnIndex) -> None:
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        index.upsert(["e"], np.ones((1, 3)))
    with pytest.raises(ValueError, match="dimension 4"):
        index.query(np.ones(5), k=1)
    with pytest.raises(ValueError, match="2 ids but 1 vectors"):
        index.upsert(["e", "f"], np.ones((1, DIM)))
    with pytest.raises(ValueError, match="'e' is zero"):
        index.upsert(["e"], np.zeros((1, DIM)))
    with pytest.raises(TypeError, match="single str"):
        index.upsert("e", np.ones((1, DIM)))
    assert len(index) == 4 and "e" not in index  # nothing half-written


def random_index(make: Factory, n: int = 300, seed: int = 1) -> tuple[AnnIndex, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM))
    index = make()
    index.upsert([f"i{j}" for j in range(n)], vectors)
    index.remove([f"i{j}" for j in range(0, n, 7)])
    return index, rng.normal(size=(20, DIM))


def test_save_and_load_round_trip(make: Factory, tmp_path: Path) -> None:
    index, queries = random_index(make)
    meta = {"offsets": {"items/0": 41, "items/1": 7}, "note": "replica a"}
    index.save(tmp_path / "snap", meta)

    loaded, loaded_meta = type(index).load(tmp_path / "snap")
    assert loaded_meta == meta
    assert type(loaded) is type(index) and loaded.dim == DIM
    assert len(loaded) == len(index)
    assert all((f"i{j}" in loaded) == (f"i{j}" in index) for j in range(300))
    for q in queries:
        assert loaded.query(q, k=10, exclude={"i1"}) == index.query(q, k=10, exclude={"i1"})

    # The loaded index keeps working: removed ids come back, new ones go in.
    loaded.upsert(["i0", "new"], [E[0], E[1]])
    assert ids(loaded.query(E[0], k=1)) == ["i0"]
    assert ids(loaded.query(E[1], k=1)) == ["new"]


def test_a_later_save_replaces_the_snapshot(make: Factory, tmp_path: Path) -> None:
    index, _ = random_index(make)
    index.save(tmp_path, {"offset": 1})
    index.upsert(["late"], [E[3]])
    index.save(tmp_path, {"offset": 2})
    loaded, meta = type(index).load(tmp_path)
    assert meta == {"offset": 2} and "late" in loaded
    assert [p.name for p in tmp_path.iterdir() if p.name != "CURRENT"][0].startswith("snap-")
    assert len(list(tmp_path.iterdir())) == 2  # CURRENT and one snapshot


def test_a_failed_save_leaves_the_previous_snapshot(
    make: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index, _ = random_index(make)
    index.save(tmp_path, {"offset": 1})

    def crash(directory: Path) -> None:
        (directory / "half-written").write_bytes(b"\0" * 10)
        raise OSError("disk full")

    index.upsert(["late"], [E[3]])
    monkeypatch.setattr(index, "_dump", crash)
    with pytest.raises(OSError, match="disk full"):
        index.save(tmp_path, {"offset": 2})
    with pytest.raises(TypeError):
        index.save(tmp_path, {"offset": object()})  # not JSON: refused before any write

    loaded, meta = type(index).load(tmp_path)
    assert meta == {"offset": 1} and "late" not in loaded
    assert len(list(tmp_path.iterdir())) == 2  # no temp dir left behind


def test_load_refuses_a_missing_or_foreign_snapshot(make: Factory, tmp_path: Path) -> None:
    index = make()
    with pytest.raises(FileNotFoundError, match="no snapshot"):
        type(index).load(tmp_path)
    other: AnnIndex = (
        BruteForceIndex(DIM) if isinstance(index, HnswIndex) else HnswIndex(DIM, max_elements=4)
    )
    other.save(tmp_path, {})
    with pytest.raises(ValueError, match="snapshot"):
        type(index).load(tmp_path)


def test_an_empty_index_round_trips(make: Factory, tmp_path: Path) -> None:
    make().save(tmp_path, {"offset": 0})
    loaded, meta = type(make()).load(tmp_path)
    assert len(loaded) == 0 and meta == {"offset": 0}
    assert loaded.query(E[0], k=3) == []
    loaded.upsert(["a", "b"], [E[0], E[1]])
    assert ids(loaded.query(E[0], k=3)) == ["a", "b"]
