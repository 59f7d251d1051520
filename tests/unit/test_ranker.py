"""The online ranker: learning, exact persistence, model averaging, vectorised scoring."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest
from numpy.typing import NDArray

from features.batch import WriteBatch
from features.keys import Keys
from features.ranker import (
    HEURISTIC_WEIGHTS,
    LinearScorer,
    OnlineRanker,
    RankerStore,
    RankerWeights,
    combine,
    heuristic_scores,
)
from features.stores.memory_store import InMemoryStore

COLUMNS = ["signal", "noise"]


def stream(seed: int, n: int) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Rows of (signal, noise); the label is exactly ``signal > 0``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    return X, X[:, 0] > 0


def learn_rows(ranker: OnlineRanker, X: NDArray[np.float64], y: NDArray[np.bool_]) -> None:
    for row, label in zip(X, y, strict=True):
        ranker.learn(dict(zip(COLUMNS, row.tolist(), strict=True)), bool(label))


def auc(scores: NDArray[np.float64], labels: NDArray[np.bool_]) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_learning_finds_the_informative_feature_and_ranks_held_out_rows() -> None:
    ranker = OnlineRanker(learning_rate=0.1, l2=1e-4)
    X, y = stream(seed=1, n=3000)
    learn_rows(ranker, X, y)
    weights = ranker.export()
    assert weights.weights["signal"] > 1.0
    assert weights.weights["signal"] > 5 * abs(weights.weights["noise"])
    assert (weights.examples, weights.positives) == (3000, int(y.sum()))

    X_test, y_test = stream(seed=2, n=1000)
    scores = LinearScorer(weights, COLUMNS).score(X_test)
    assert auc(scores, y_test) > 0.8
    assert float(((scores > 0.5) == y_test).mean()) > 0.8


def test_linear_scorer_matches_river_row_by_row() -> None:
    ranker = OnlineRanker(learning_rate=0.2, l2=1e-3)
    rng = np.random.default_rng(3)
    for _ in range(300):
        ranker.learn(
            {"a": rng.normal(), "b": rng.normal(), "only_learned": rng.normal()},
            bool(rng.random() < 0.3),
        )
    columns = ["b", "never_learned", "a"]  # another order, an unknown name, a missing one
    scorer = LinearScorer(ranker.export(), columns)
    for X in (rng.normal(scale=3.0, size=(50, 3)), rng.normal(size=(50, 3)).astype(np.float32)):
        scores = scorer.score(X)
        assert scores.dtype == np.float64 and scores.shape == (50,)
        for row, score in zip(X, scores, strict=True):
            features = dict(zip(columns, row.tolist(), strict=True))
            assert score == pytest.approx(ranker.predict(features), abs=1e-9)


def test_linear_scorer_column_override_and_extreme_logits() -> None:
    weights = RankerWeights({"a": 1.0, "b": -2.0}, 0.5, examples=5, positives=1)
    scorer = LinearScorer(weights, ["a", "b"])
    X = np.array([[1.0, 2.0], [3.0, -1.0], [1e6, 0.0], [-1e6, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on huge logits
        scores = scorer.score(X)
    assert scores.tolist()[2:] == [1.0, 0.0]
    assert scores[0] == pytest.approx(1 / (1 + math.exp(2.5)), abs=1e-15)
    np.testing.assert_array_equal(scorer.score(X[:, ::-1], ["b", "a"]), scores)
    with pytest.raises(ValueError, match="shape"):
        scorer.score(np.zeros((2, 3)))


def test_export_restore_continues_learning_identically() -> None:
    rng = np.random.default_rng(4)

    def example() -> tuple[dict[str, float], bool]:
        # a sparse mix of names, some of which first appear after the restore
        names = rng.choice(["a", "b", "c", "d", "e"], size=3, replace=False).tolist()
        return {n: float(rng.normal()) for n in names}, bool(rng.random() < 0.4)

    first = [example() for _ in range(200)]
    second = [example() for _ in range(200)] + [({"late": 2.0}, True)]
    settings = {"learning_rate": 0.3, "l2": 0.01}

    straight = OnlineRanker(**settings)
    for features, label in first + second:
        straight.learn(features, label)

    before = OnlineRanker(**settings)
    for features, label in first:
        before.learn(features, label)
    published = RankerWeights.from_json(before.export().to_json())
    resumed = OnlineRanker.restore(published, **settings)
    for features, label in second:
        resumed.learn(features, label)

    want, got = straight.export(), resumed.export()
    assert got.weights.keys() == want.weights.keys()
    for name, value in want.weights.items():
        assert got.weights[name] == pytest.approx(value, abs=1e-12)
    assert got.intercept == pytest.approx(want.intercept, abs=1e-12)
    assert (got.examples, got.positives) == (want.examples, want.positives)
    probe = {"a": 0.3, "late": -1.0}
    assert resumed.predict(probe) == pytest.approx(straight.predict(probe), abs=1e-12)


def test_learning_rejects_non_finite_features() -> None:
    ranker = OnlineRanker(learning_rate=0.1, l2=0.0)
    with pytest.raises(ValueError, match="finite"):
        ranker.learn({"a": float("nan")}, True)
    assert ranker.export() == RankerWeights.empty()


def test_json_round_trip_is_exact() -> None:
    weights = RankerWeights(
        {"source:trending": 0.1 + 0.2, 'q"uote é': -5e-324, "big": 1.7976931348623157e308},
        intercept=-1e-300,
        examples=12,
        positives=7,
    )
    assert RankerWeights.from_json(weights.to_json()) == weights
    assert RankerWeights.from_json(weights.to_json().decode()) == weights
    assert RankerWeights.from_json(RankerWeights.empty().to_json()) == RankerWeights.empty()


@pytest.mark.parametrize(
    "data",
    [
        '{"weights": {"a": NaN}, "intercept": 0.0, "examples": 1, "positives": 0}',
        '{"weights": {"a": 1.0}, "intercept": 1e400, "examples": 1, "positives": 0}',
        '{"weights": {"a": "1.0"}, "intercept": 0.0, "examples": 1, "positives": 0}',
        '{"weights": {"a": true}, "intercept": 0.0, "examples": 1, "positives": 0}',
        '{"weights": [1.0], "intercept": 0.0, "examples": 1, "positives": 0}',
        '{"weights": {"a": 1.0}, "examples": 1, "positives": 0}',
        '{"weights": {"a": 1.0}, "intercept": 0.0, "examples": 1.5, "positives": 0}',
        '{"weights": {"a": 1.0}, "intercept": 0.0, "examples": -1, "positives": 0}',
        '{"weights": {"a": 1.0}, "intercept": 0.0, "examples": 1, "positives": 2}',
        "[1, 2]",
        "{not json",
    ],
)
def test_bad_json_is_rejected(data: str) -> None:
    with pytest.raises(ValueError):
        RankerWeights.from_json(data)


def test_non_finite_weights_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="finite"):
        RankerWeights({"a": float("inf")}, 0.0, 1, 0)


def test_combine_is_an_example_weighted_average() -> None:
    a = RankerWeights({"x": 1.0, "y": 2.0}, intercept=0.5, examples=1, positives=1)
    b = RankerWeights({"x": 3.0}, intercept=-1.5, examples=3, positives=1)
    never_learned = RankerWeights({"x": 100.0, "z": 7.0}, intercept=9.0, examples=0, positives=0)
    want = RankerWeights({"x": 2.5, "y": 0.5}, intercept=-1.0, examples=4, positives=2)
    assert combine([a, b]) == want
    assert combine([never_learned, a, RankerWeights.empty(), b]) == want
    assert combine([a]) == a
    assert combine([]) == RankerWeights.empty()
    assert combine([never_learned]) == RankerWeights.empty()


def test_heuristic_prefers_session_similarity_and_tolerates_missing_columns() -> None:
    columns = ["log_popularity", "cos_session", "not_a_heuristic_feature", "log_age_hours"]
    X = np.array(
        [
            [2.0, 0.2, 50.0, 1.0],
            [2.0, 0.9, 50.0, 1.0],  # closer to the session
            [2.0, 0.9, 50.0, 3.0],  # same, but older
        ],
        dtype=np.float32,
    )
    scores = heuristic_scores(columns, X)
    assert scores[1] > scores[0] and scores[1] > scores[2]
    assert scores[0] == pytest.approx(2.0 * 0.2 + 0.2 * 1.0 - 0.1 * 1.0, abs=1e-6)
    only = heuristic_scores(["cos_session"], np.array([[0.1], [0.7]]))
    assert only.tolist() == [0.1 * HEURISTIC_WEIGHTS["cos_session"], 0.7]
    assert heuristic_scores([], np.zeros((3, 0))).tolist() == [0.0, 0.0, 0.0]


def test_store_saves_parts_and_serves_their_combination() -> None:
    rankers, store = RankerStore(Keys("t")), InMemoryStore()
    assert rankers.load(store) == RankerWeights.empty()
    p0 = RankerWeights({"x": 1.0}, 0.0, examples=1, positives=1)
    p1 = RankerWeights({"x": 3.0, "y": 0.4}, 1.0, examples=3, positives=0)
    batch = WriteBatch()
    rankers.save(batch, "impressions:0", p0)
    rankers.save(batch, "impressions:1", p1)
    store.commit(batch)
    assert rankers.load_parts(store) == {"impressions:0": p0, "impressions:1": p1}
    assert rankers.load(store) == combine([p0, p1])

    newer = RankerWeights({"x": 2.0}, 0.0, examples=2, positives=1)
    batch = WriteBatch()
    rankers.save(batch, "impressions:0", newer)
    store.commit(batch)
    assert rankers.load_parts(store)["impressions:0"] == newer


def test_store_skips_a_corrupt_part(caplog: pytest.LogCaptureFixture) -> None:
    rankers, store = RankerStore(Keys("t")), InMemoryStore()
    good = RankerWeights({"x": 1.0}, 0.0, examples=1, positives=0)
    batch = WriteBatch()
    rankers.save(batch, "good", good)
    batch.hset(rankers.keys.ranker(), {"torn": '{"weights": {"x": 1', "nan": '{"weights": NaN}'})
    store.commit(batch)
    with caplog.at_level(logging.WARNING, logger="features.ranker"):
        assert rankers.load_parts(store) == {"good": good}
        assert rankers.load(store) == good
    assert "torn" in caplog.text and "nan" in caplog.text


def test_sgd_steps_use_the_configured_rate_for_weights_intercept_and_l2() -> None:
    lr, l2 = 0.1, 0.5
    ranker = OnlineRanker(learning_rate=lr, l2=l2)
    ranker.learn({"a": 2.0}, True)  # logit 0: gradient −0.5, and no penalty on zero weights
    assert ranker.export() == RankerWeights({"a": 0.1}, 0.05, examples=1, positives=1)
    ranker.learn({"a": 2.0}, False)
    p = 1 / (1 + math.exp(-0.25))  # the click probability before the second step
    got = ranker.export()
    assert got.weights["a"] == pytest.approx(0.1 - lr * (2.0 * p + l2 * 0.1), abs=1e-15)
    assert got.intercept == pytest.approx(0.05 - lr * p, abs=1e-15)
