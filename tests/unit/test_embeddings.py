"""Content embeddings and decayed session/user embeddings against hand-computed values."""

from __future__ import annotations

import hashlib
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from features import embeddings
from features.embeddings import (
    EMBEDDING_EVENT_WEIGHTS,
    EmbeddingState,
    content_embedding,
    update,
    update_many,
    vector,
)

X1 = np.array([1.0, 0.0, 0.0], dtype=np.float32)
X2 = np.array([0.0, 1.0, 0.0], dtype=np.float32)
MIN = 60_000  # one minute in ms


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- decayed weighted mean ------------------------------------------------------------------


def test_second_event_one_half_life_later_halves_the_first() -> None:
    s = update(None, X1, 1.0, 0, half_life_s=60.0)
    s = update(s, X2, 1.0, MIN, half_life_s=60.0)
    assert s.total.dtype == np.float32
    np.testing.assert_allclose(s.total, [0.5, 1.0, 0.0], rtol=1e-6)
    assert s.mass == pytest.approx(1.5)
    assert (s.last_ts_ms, s.count) == (MIN, 2)
    v = vector(s)
    assert v is not None and v.dtype == np.float32
    np.testing.assert_allclose(v, [0.5 / math.sqrt(1.25), 1.0 / math.sqrt(1.25), 0.0], rtol=1e-6)


def test_weights_scale_the_pull_and_mass_adds_their_size() -> None:
    s = update(None, X1, 4.0, 0, half_life_s=60.0)  # a purchase
    s = update(s, X2, 1.0, 0, half_life_s=60.0)  # a click at the same time
    np.testing.assert_allclose(s.total, [4.0, 1.0, 0.0])
    assert s.mass == pytest.approx(5.0)


def test_skip_pushes_the_vector_away_from_the_item() -> None:
    s = update(None, X1, 1.0, 0, half_life_s=60.0)
    s = update(s, X2, 1.0, 0, half_life_s=60.0)
    before = vector(s)
    skipped = update(s, X1, EMBEDDING_EVENT_WEIGHTS["skip"], 0, half_life_s=60.0)
    after = vector(skipped)
    assert before is not None and after is not None
    # total (1, 1, 0) → (0.5, 1, 0): cosine with x1 falls from 1/√2 to 0.5/√1.25.
    assert cos(before, X1) == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    assert cos(after, X1) == pytest.approx(0.5 / math.sqrt(1.25), rel=1e-6)
    assert skipped.mass == pytest.approx(2.5)  # |−0.5| adds to the mass


def test_dismiss_alone_points_away_and_cancelling_events_give_no_vector() -> None:
    dismissed = update(None, X1, EMBEDDING_EVENT_WEIGHTS["dismiss"], 0, half_life_s=60.0)
    np.testing.assert_array_equal(vector(dismissed), -X1)
    liked_then_dismissed = update(
        update(None, X1, 1.0, 0, half_life_s=60.0), X1, -1.0, 0, half_life_s=60.0
    )
    assert liked_then_dismissed.mass == pytest.approx(2.0)
    assert vector(liked_then_dismissed) is None
    assert vector(None) is None


def test_event_weights_follow_intent() -> None:
    w = EMBEDDING_EVENT_WEIGHTS
    order = ["purchase", "add_to_cart", "like", "share", "click", "view"]
    assert [w[t] for t in order] == sorted((w[t] for t in order), reverse=True)
    assert len({w[t] for t in order}) == len(order) and w["view"] > 0
    assert 0 > w["skip"] > w["dismiss"]


def test_a_session_gap_starts_a_fresh_state() -> None:
    gap_s = 30 * 60.0
    s = update(None, X1, 1.0, 0, half_life_s=600.0, session_gap_s=gap_s)
    s = update(s, X1, 1.0, MIN, half_life_s=600.0, session_gap_s=gap_s)
    fresh = update(s, X2, 2.0, MIN + 30 * MIN + 1, half_life_s=600.0, session_gap_s=gap_s)
    assert fresh.count == 1
    np.testing.assert_array_equal(fresh.total, 2.0 * X2)
    assert fresh.mass == 2.0 and fresh.last_ts_ms == 31 * MIN + 1
    # Exactly one gap later is still the same session.
    same = update(s, X2, 1.0, MIN + 30 * MIN, half_life_s=600.0, session_gap_s=gap_s)
    assert same.count == 3
    # A user embedding (no gap) never resets: 31 min at a 10-min half-life leaves 2^-3.1.
    user = update(s, X2, 1.0, 32 * MIN, half_life_s=600.0, session_gap_s=None)
    assert user.count == 3
    assert user.total[0] == pytest.approx(s.total[0] * 2 ** (-3.1), rel=1e-5)


def test_a_late_event_gets_its_own_decay_and_never_undecays_the_state() -> None:
    in_order = update(update(None, X1, 1.0, 0, half_life_s=60.0), X2, 1.0, MIN, half_life_s=60.0)
    late = update(update(None, X2, 1.0, MIN, half_life_s=60.0), X1, 1.0, 0, half_life_s=60.0)
    # The reference time stays at the newest event; the late x1 counts 2^-1, as in order.
    assert late.last_ts_ms == MIN
    np.testing.assert_allclose(late.total, in_order.total, rtol=1e-6)
    assert late.mass == pytest.approx(in_order.mass)
    assert late.count == 2


def test_an_event_older_than_a_gap_before_the_state_is_dropped() -> None:
    gap_s = 30 * 60.0
    s = update(None, X2, 1.0, 100 * MIN, half_life_s=600.0, session_gap_s=gap_s)
    assert update(s, X1, 1.0, 69 * MIN, half_life_s=600.0, session_gap_s=gap_s) is s
    kept = update(s, X1, 1.0, 70 * MIN, half_life_s=600.0, session_gap_s=gap_s)
    assert kept.count == 2 and kept.last_ts_ms == 100 * MIN
    assert kept.total[0] == pytest.approx(2**-3, rel=1e-6)  # 30 min at a 10-min half-life
    # Without a session gap (user embeddings) the same event is folded in with its decay.
    user = update(s, X1, 1.0, 40 * MIN, half_life_s=600.0, session_gap_s=None)
    assert user.total[0] == pytest.approx(2**-6, rel=1e-6)


def test_updates_validate_their_inputs() -> None:
    s = update(None, X1, 1.0, 0, half_life_s=60.0)
    with pytest.raises(ValueError, match="shape"):
        update(s, np.ones(4, np.float32), 1.0, 1, half_life_s=60.0)
    with pytest.raises(ValueError, match="finite"):
        update(s, X1, float("nan"), 1, half_life_s=60.0)
    with pytest.raises(ValueError):
        update(s, X1, 1.0, 1, half_life_s=0.0)
    with pytest.raises(ValueError, match="dim"):
        update_many(s, np.ones((2, 4)), [1.0, 1.0], [1, 2], half_life_s=60.0)
    with pytest.raises(ValueError, match="weights"):
        update_many(s, np.ones((2, 3)), [1.0], [1, 2], half_life_s=60.0)


# --- serialisation --------------------------------------------------------------------------


def test_bytes_round_trip_is_exact() -> None:
    rng = np.random.default_rng(5)
    s = None
    for t in range(20):
        s = update(s, rng.standard_normal(16), float(rng.uniform(-1, 4)), t * 7_919, half_life_s=90)
    assert s is not None
    data = s.to_bytes()
    assert len(data) == 8 + 8 + 4 + 4 * 16
    assert struct.unpack_from("<qdI", data) == (s.last_ts_ms, s.mass, s.count)
    back = EmbeddingState.from_bytes(data, dim=16)
    assert back.to_bytes() == data
    assert back.total.dtype == np.float32
    np.testing.assert_array_equal(back.total, s.total)
    assert (back.mass, back.last_ts_ms, back.count) == (s.mass, s.last_ts_ms, s.count)
    assert EmbeddingState.from_bytes(bytearray(data), dim=16).to_bytes() == data


def test_bytes_of_the_wrong_size_or_with_nan_are_rejected() -> None:
    data = update(None, X1, 1.0, 5, half_life_s=60.0).to_bytes()
    for bad in (data[:-1], data + b"\0", b""):
        with pytest.raises(ValueError, match="bytes"):
            EmbeddingState.from_bytes(bad, dim=3)
    with pytest.raises(ValueError):
        EmbeddingState.from_bytes(data, dim=4)
    nan = data[:20] + struct.pack("<f", float("nan")) + data[24:]
    with pytest.raises(ValueError, match="non-finite"):
        EmbeddingState.from_bytes(nan, dim=3)


# --- batches --------------------------------------------------------------------------------


def _random_events(
    rng: np.random.Generator, n: int, dim: int, jitter_ms: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Mostly seconds apart, now and then an hour apart (past the 30-min session gap).
    steps = np.where(rng.random(n) < 0.08, 3_600_000, rng.integers(0, 20_000, n))
    ts = np.cumsum(steps) + rng.integers(-jitter_ms, jitter_ms + 1, n)
    xs = rng.standard_normal((n, dim)).astype(np.float32)
    ws = rng.choice(list(EMBEDDING_EVENT_WEIGHTS.values()), n)
    return xs, ws, ts


def _sequential(
    state: EmbeddingState | None,
    xs: np.ndarray,
    ws: np.ndarray,
    ts: np.ndarray,
    gap_s: float | None,
) -> EmbeddingState | None:
    for i in np.argsort(ts, kind="stable"):
        state = update(state, xs[i], float(ws[i]), int(ts[i]), half_life_s=300, session_gap_s=gap_s)
    return state


def _assert_same(a: EmbeddingState | None, b: EmbeddingState | None) -> None:
    assert a is not None and b is not None
    assert (a.last_ts_ms, a.count) == (b.last_ts_ms, b.count)
    assert a.mass == pytest.approx(b.mass, rel=1e-9)
    np.testing.assert_allclose(a.total, b.total, rtol=1e-4, atol=1e-5 * max(1.0, b.mass))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("gap_s", [1800.0, None])
def test_update_many_equals_sequential_updates(seed: int, gap_s: float | None) -> None:
    rng = np.random.default_rng(seed)
    xs, ws, ts = _random_events(rng, 400, 8, jitter_ms=30_000)  # slightly out of order
    _assert_same(
        update_many(None, xs, ws, ts, half_life_s=300, session_gap_s=gap_s),
        _sequential(None, xs, ws, ts, gap_s),
    )
    # Folding the second half into the state the first half left.
    first = update_many(None, xs[:200], ws[:200], ts[:200], half_life_s=300, session_gap_s=gap_s)
    assert first is not None
    _assert_same(
        update_many(first, xs[200:], ws[200:], ts[200:], half_life_s=300, session_gap_s=gap_s),
        _sequential(first, xs[200:], ws[200:], ts[200:], gap_s),
    )


def test_update_many_drops_a_stale_prefix_and_keeps_the_rest() -> None:
    gap_s = 1800.0
    s = update(None, X1, 1.0, 100 * MIN, half_life_s=600.0, session_gap_s=gap_s)
    xs = np.stack([X2, X2, X2])
    ts = [10 * MIN, 69 * MIN, 80 * MIN]  # the first two are more than a gap older
    out = update_many(s, xs, [1.0, 1.0, 1.0], ts, half_life_s=600.0, session_gap_s=gap_s)
    assert out.count == 2 and out.last_ts_ms == 100 * MIN
    assert out.total[1] == pytest.approx(2**-2, rel=1e-6)  # 20 min at a 10-min half-life
    assert update_many(s, xs[:2], [1.0, 1.0], ts[:2], half_life_s=600.0, session_gap_s=gap_s) is s


def test_update_many_keeps_only_the_last_session_of_a_batch() -> None:
    xs = np.stack([X1, X1, X2, X2])
    ts = [0, MIN, 60 * MIN, 61 * MIN]
    out = update_many(None, xs, [1.0] * 4, ts, half_life_s=60.0, session_gap_s=1800.0)
    assert out is not None and out.count == 2
    np.testing.assert_allclose(out.total, [0.0, 1.5, 0.0], rtol=1e-6)


def test_within_a_session_the_arrival_order_does_not_matter() -> None:
    rng = np.random.default_rng(11)
    xs, ws, _ = _random_events(rng, 50, 6, jitter_ms=0)
    ts = np.sort(rng.integers(0, 600_000, 50))

    def apply(order: np.ndarray) -> EmbeddingState | None:
        s = None
        for i in order:
            s = update(s, xs[i], float(ws[i]), int(ts[i]), half_life_s=60, session_gap_s=900)
        return s

    _assert_same(apply(rng.permutation(50)), apply(np.arange(50)))


def test_an_empty_batch_changes_nothing() -> None:
    s = update(None, X1, 1.0, 0, half_life_s=60.0)
    empty = np.zeros((0, 3), np.float32)
    assert update_many(s, empty, [], [], half_life_s=60.0) is s
    assert update_many(None, empty, [], [], half_life_s=60.0) is None


# --- content embedding ----------------------------------------------------------------------

SPORT = {"category": "Sport", "creator": "bbc", "tags": ["football", "derby"], "text": None}


def test_content_embedding_is_a_unit_float32_vector_of_the_asked_dim() -> None:
    for dim in (1, 2, 7, 64, 300):
        v = content_embedding(dim=dim, **SPORT)
        assert v.dtype == np.float32 and v.shape == (dim,)
        assert float(np.linalg.norm(v)) == pytest.approx(1.0, abs=1e-6)


def test_one_token_is_four_signed_hashed_dims_computed_by_hand() -> None:
    digest = hashlib.blake2b(b"cat:news", digest_size=32, person=b"streamrec.cemb1").digest()
    expected = np.zeros(64, np.float32)
    for k in range(0, 32, 4):
        u = int.from_bytes(digest[k : k + 4], "little")
        if expected[(u >> 1) % 64] == 0 and np.count_nonzero(expected) < 4:
            expected[(u >> 1) % 64] = 0.5 if u & 1 else -0.5
    got = content_embedding(dim=64, category=" NEWS ", creator=None, tags=[], text=None)
    np.testing.assert_array_equal(got, expected)


def test_content_embedding_is_deterministic_across_processes() -> None:
    item = {"category": "Music", "creator": "c9", "tags": ["jazz", "live"], "text": "Blue in green"}
    here = content_embedding(dim=32, **item).tobytes().hex()
    assert content_embedding(dim=32, **item).tobytes().hex() == here
    embeddings._TABLES.clear()  # the token cache never changes a value
    assert content_embedding(dim=32, **item).tobytes().hex() == here
    reordered = {**item, "tags": ["live", "jazz", "Jazz"]}
    assert content_embedding(dim=32, **reordered).tobytes().hex() == here
    code = (
        "from features.embeddings import content_embedding as ce; "
        f"print(ce(dim=32, **{item!r}).tobytes().hex())"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == here


def test_shared_category_and_tags_point_the_same_way() -> None:
    def emb(category: str, tags: list[str], text: str, creator: str = "x") -> np.ndarray:
        return content_embedding(dim=64, category=category, creator=creator, tags=tags, text=text)

    a = emb("sport", ["football", "derby"], "Late goal settles the derby")
    same_topic = emb("sport", ["football", "derby"], "Manager sacked after cup exit", "y")
    same_cat = emb("sport", ["tennis"], "Five-set thriller at the open", "y")
    same_words = emb("cooking", ["pasta"], "Late goal settles the derby", "y")
    unrelated = emb("cooking", ["pasta"], "Weeknight carbonara in ten minutes", "y")
    assert cos(a, same_topic) > 0.6
    assert cos(a, same_topic) > cos(a, same_cat) > cos(a, unrelated)
    assert cos(a, same_topic) > cos(a, same_words)  # category and tags outweigh words
    assert abs(cos(a, unrelated)) < 0.4


def test_no_content_gives_the_zero_vector() -> None:
    for content in (
        {"category": None, "creator": None, "tags": [], "text": None},
        {"category": "  ", "creator": "", "tags": ["", " "], "text": "a, the! - ?"},
    ):
        v = content_embedding(dim=16, **content)  # type: ignore[arg-type]
        assert v.dtype == np.float32 and v.shape == (16,) and not v.any()


def test_tokens_that_cancel_exactly_still_give_a_unit_vector() -> None:
    # At dim 1 every token is ±1 on the single dim; a category and a tag of opposite signs
    # and equal weights cancel exactly, and the fallback token must take over.
    def at_dim_1(category: str | None = None, tags: tuple[str, ...] = ()) -> float:
        v = content_embedding(dim=1, category=category, creator=None, tags=tags, text=None)
        return float(v[0])

    plus = next(c for c in (f"c{i}" for i in range(100)) if at_dim_1(category=c) > 0)
    minus = next(t for t in (f"t{i}" for i in range(100)) if at_dim_1(tags=(t,)) < 0)
    v = content_embedding(dim=1, category=plus, creator=None, tags=[minus], text=None)
    assert abs(float(v[0])) == 1.0


def test_update_many_starts_a_new_session_after_a_gap_since_the_stored_state() -> None:
    axis = np.eye(4, dtype=np.float32)
    state = update(None, axis[0], 1.0, 0, half_life_s=600, session_gap_s=1800)
    later = 3 * 3_600_000
    one = update(state, axis[2], 1.0, later, half_life_s=600, session_gap_s=1800)
    many = update_many(
        state, axis[[2]], np.array([1.0]), np.array([later]), half_life_s=600, session_gap_s=1800
    )
    assert one.count == many.count == 1
    assert many.total.tolist() == one.total.tolist() == axis[2].tolist()
