"""The scorer's online ranker: learned with river in the worker, served as plain numbers.

The worker learns one :class:`OnlineRanker` per impressions-topic partition and publishes
each as a part of one hash, so two workers never write the same field. Servers read every
part, :func:`combine` them by an example-weighted average (parallel SGD model averaging,
Zinkevich et al. 2010) and score candidate batches with numpy through :class:`LinearScorer`.
Weights travel as JSON, never pickle: a server must not run code a worker wrote.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import zip_longest

import numpy as np
import orjson
from numpy.typing import NDArray
from river import linear_model, optim

from features.batch import WriteBatch
from features.keys import Keys
from features.store import Store

log = logging.getLogger(__name__)

#: The cold-model fallback blend. Similarity to the current session dominates because it is
#: the freshest signal of intent; the long-term user vector and co-visitation follow. Category
#: affinity, trend velocity, popularity and the number of sources that proposed an item are
#: weaker and mostly break ties between similar candidates; older items sink slowly.
HEURISTIC_WEIGHTS: dict[str, float] = {
    "cos_session": 1.0,
    "cos_user": 0.6,
    "covis_score": 0.8,
    "trending_velocity": 0.3,
    "log_popularity": 0.2,
    "category_affinity": 0.5,
    "n_sources": 0.2,
    "log_age_hours": -0.1,
}

Matrix = NDArray[np.float64] | NDArray[np.float32]

#: Where a ranker that has learned nothing starts: exactly the cold blend the funnel ranks by
#: before the ranker takes over (the ``blend`` feature), so learning refines that order
#: instead of starting from a random one.
PRIOR_WEIGHTS: dict[str, float] = {"blend": 1.0}


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, not {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{what} must be finite, not {out}")
    return out


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, not {value!r}")
    return value


@dataclass(frozen=True)
class RankerWeights:
    """A linear model as plain numbers, with how many examples (and positives) taught it.

    Construction checks every number, so a diverged model can never be published.

    Examples:
        >>> w = RankerWeights({"cos_session": 1.5}, intercept=-2.0, examples=10, positives=3)
        >>> w.to_json()
        b'{"examples":10,"intercept":-2.0,"positives":3,"weights":{"cos_session":1.5}}'
        >>> RankerWeights.from_json(w.to_json()) == w
        True
    """

    weights: dict[str, float]
    intercept: float
    examples: int
    positives: int

    def __post_init__(self) -> None:
        if not isinstance(self.weights, dict):
            raise ValueError("weights must be an object of name → number")
        for name, value in self.weights.items():
            if not isinstance(name, str):
                raise ValueError(f"weight name {name!r} is not a string")
            _number(value, f"weight {name!r}")
        _number(self.intercept, "intercept")
        _count(self.examples, "examples")
        if _count(self.positives, "positives") > self.examples:
            raise ValueError("positives exceed examples")

    @classmethod
    def empty(cls) -> RankerWeights:
        """A model that has learned nothing."""
        return cls({}, 0.0, 0, 0)

    @classmethod
    def prior(cls) -> RankerWeights:
        """Where learning starts: :data:`PRIOR_WEIGHTS`, no examples."""
        return cls(dict(PRIOR_WEIGHTS), 0.0, 0, 0)

    def to_json(self) -> bytes:
        """Compact JSON with sorted keys (a stable text for equal weights)."""
        return orjson.dumps(
            {
                "weights": self.weights,
                "intercept": self.intercept,
                "examples": self.examples,
                "positives": self.positives,
            },
            option=orjson.OPT_SORT_KEYS,
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> RankerWeights:
        """Parse :meth:`to_json` output; ValueError names what is wrong. Unknown keys are
        ignored, so a writer may add fields before every reader knows them."""
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"ranker weights are not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError("ranker weights must be a JSON object")
        missing = {"weights", "intercept", "examples", "positives"} - raw.keys()
        if missing:
            raise ValueError(f"ranker weights lack {sorted(missing)}")
        return cls(raw["weights"], raw["intercept"], raw["examples"], raw["positives"])


def combine(parts: Sequence[RankerWeights]) -> RankerWeights:
    """Example-weighted average of the parts' weights and intercepts; counts are summed.

    A name a part lacks counts as 0 there (the part never saw it, and river starts every
    weight at 0). Parts that learned nothing carry no weight.

    Examples:
        >>> a = RankerWeights({"x": 1.0}, 0.0, examples=1, positives=1)
        >>> b = RankerWeights({"y": 4.0}, 2.0, examples=3, positives=0)
        >>> combine([a, b, RankerWeights.empty()])
        RankerWeights(weights={'x': 0.25, 'y': 3.0}, intercept=1.5, examples=4, positives=1)
    """
    live = [p for p in parts if p.examples > 0]
    if not live:
        return RankerWeights.empty()
    total = sum(p.examples for p in live)
    weights: dict[str, float] = {}
    intercept = 0.0
    for part in live:
        share = part.examples / total
        for name, value in part.weights.items():
            weights[name] = weights.get(name, 0.0) + share * value
        intercept += share * part.intercept
    return RankerWeights(weights, intercept, total, sum(p.positives for p in live))


class OnlineRanker:
    """Logistic regression learned one joined impression at a time (river, plain SGD).

    The intercept learns at the same constant rate as the weights: it is the weight of an
    always-on feature, and river's own default (0.01) would ignore the configured rate.

    Examples:
        >>> ranker = OnlineRanker(learning_rate=0.5, l2=0.0)
        >>> for _ in range(20):
        ...     ranker.learn({"cos_session": 1.0}, True)
        ...     ranker.learn({"cos_session": -1.0}, False)
        >>> ranker.predict({"cos_session": 1.0}) > 0.9 > 0.1 > ranker.predict({"cos_session": -1.0})
        True
        >>> ranker.export().examples, ranker.export().positives
        (40, 20)
    """

    def __init__(self, *, learning_rate: float, l2: float) -> None:
        self.learning_rate = learning_rate
        self.l2 = l2
        self.examples = 0
        self.positives = 0
        self._model = linear_model.LogisticRegression(
            optimizer=optim.SGD(learning_rate), l2=l2, intercept_lr=learning_rate
        )

    def learn(self, features: Mapping[str, float], label: bool) -> None:
        """One SGD step on a labelled example; ValueError on a non-finite feature, which
        would otherwise poison every weight it touches."""
        x = {name: float(value) for name, value in features.items()}  # bools become 0/1
        if bad := [name for name, value in x.items() if not math.isfinite(value)]:
            raise ValueError(f"features must be finite: {bad}")
        self._model.learn_one(x, bool(label))
        self.examples += 1
        self.positives += bool(label)

    def learn_pair(self, preferred: Mapping[str, float], other: Mapping[str, float]) -> None:
        """Two SGD steps on the difference of a preference pair (RankNet-style logistic
        loss on ``w·(a − b)``), once each way, so the intercept learns nothing and only the
        order counts; ValueError on a non-finite feature."""
        names = preferred.keys() | other.keys()
        diff = {n: float(preferred.get(n, 0.0)) - float(other.get(n, 0.0)) for n in names}
        self.learn(diff, True)
        self.learn({n: -v for n, v in diff.items()}, False)

    def predict(self, features: Mapping[str, float]) -> float:
        """Probability of a click; unseen names weigh 0."""
        # river leaves predict_proba_one unannotated; it returns {False: 1 - p, True: p}.
        proba = self._model.predict_proba_one(dict(features))  # type: ignore[no-untyped-call]
        return float(proba[True])

    def export(self) -> RankerWeights:
        """The current state as plain numbers."""
        weights = {str(name): float(w) for name, w in self._model.weights.items()}
        return RankerWeights(weights, float(self._model.intercept), self.examples, self.positives)

    @classmethod
    def restore(cls, weights: RankerWeights, *, learning_rate: float, l2: float) -> OnlineRanker:
        """A ranker that continues learning exactly as the one that exported ``weights``.

        With plain SGD, constant rates and L2, river's whole learning state is the weights,
        the intercept and the optimizer's step count (which only a decaying schedule would
        read; it equals ``examples`` because every example is one step). Restoring a
        :func:`combine` result continues from the average, the usual parallel-SGD practice.
        """
        ranker = cls(learning_rate=learning_rate, l2=l2)
        for name, value in weights.weights.items():
            ranker._model._weights[name] = value
        ranker._model.intercept = weights.intercept
        ranker._model.optimizer.n_iterations = weights.examples
        ranker.examples = weights.examples
        ranker.positives = weights.positives
        return ranker


#: Most pairs one clicked slot makes: the unclicked slots above it, then the one below it.
MAX_PAIRS_PER_CLICK = 6


def preference_pairs(
    slots: Sequence[tuple[str, int, bool, Mapping[str, float] | None]],
    max_pairs: int = MAX_PAIRS_PER_CLICK,
) -> list[tuple[Mapping[str, float], Mapping[str, float]]]:
    """(preferred, other) feature pairs from finalised slots ``(request_id, position,
    clicked, features)``: within one feed, a clicked slot is preferred to the unclicked
    slots nearest to it, taken alternately below and above it, at most ``max_pairs`` per
    click. Pairs from above only ("click > skip above", Joachims 2002) always put the
    clicked item lower in the served order, which would teach the ranker to undo the order
    it serves; alternating keeps the served score out of the pair's direction. Feeds
    without a click teach nothing: a pairwise ranker needs no calibrated click-rate.

    Examples:
        >>> f = lambda v: {"x": v}
        >>> slots = [("r", 0, False, f(0.0)), ("r", 1, True, f(1.0)), ("r", 2, False, f(2.0)),
        ...          ("r", 3, False, f(3.0)), ("s", 0, False, f(9.0))]
        >>> [(a["x"], b["x"]) for a, b in preference_pairs(slots)]
        [(1.0, 2.0), (1.0, 0.0), (1.0, 3.0)]
    """
    feeds: dict[str, list[tuple[int, bool, Mapping[str, float]]]] = {}
    for request_id, position, clicked, features in slots:
        if features is not None:
            feeds.setdefault(request_id, []).append((position, clicked, features))
    pairs: list[tuple[Mapping[str, float], Mapping[str, float]]] = []
    for request_id in sorted(feeds):
        shown = sorted(feeds[request_id], key=lambda slot: slot[0])
        for n, (_, clicked, preferred) in enumerate(shown):
            if not clicked:
                continue
            above = [s[2] for s in reversed(shown[:n]) if not s[1]]
            below = [s[2] for s in shown[n + 1 :] if not s[1]]
            others = [x for pair in zip_longest(below, above) for x in pair if x is not None]
            pairs.extend((preferred, other) for other in others[:max_pairs])
    return pairs


def _read_only(vector: NDArray[np.float64]) -> NDArray[np.float64]:
    vector.setflags(write=False)
    return vector


def _check_matrix(X: Matrix, columns: Sequence[str]) -> None:
    if X.ndim != 2 or X.shape[1] != len(columns):
        raise ValueError(f"expected shape (n, {len(columns)}), got {X.shape}")


def _sigmoid(z: NDArray[np.float64]) -> NDArray[np.float64]:
    # exp of a non-positive number never overflows, whatever the logit.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class LinearScorer:
    """Vectorised click probabilities from :class:`RankerWeights` over a feature matrix.

    Names the model never learned weigh 0; names the columns lack are simply unused.

    Examples:
        >>> w = RankerWeights({"cos_session": 2.0, "old": 5.0}, 0.0, examples=1, positives=0)
        >>> scorer = LinearScorer(w, ["cos_session", "unknown"])
        >>> scorer.score(np.array([[0.0, 9.0], [1.0, 9.0]])).round(4).tolist()
        [0.5, 0.8808]
    """

    #: Most column orders whose aligned vectors are kept (the funnel uses a handful).
    MAX_CACHED = 32

    def __init__(self, weights: RankerWeights, columns: Sequence[str]) -> None:
        self.weights = weights
        self.columns = tuple(columns)
        self._aligned: dict[tuple[str, ...], NDArray[np.float64]] = {}

    def aligned(self, columns: Sequence[str]) -> NDArray[np.float64]:
        """The weight vector in the order of ``columns`` (cached, read-only)."""
        key = tuple(columns)
        vector = self._aligned.get(key)
        if vector is None:
            if len(self._aligned) >= self.MAX_CACHED:
                self._aligned.clear()
            get = self.weights.weights.get
            vector = _read_only(np.array([get(c, 0.0) for c in key], dtype=np.float64))
            self._aligned[key] = vector
        return vector

    def score(self, X: Matrix, columns: Sequence[str] | None = None) -> NDArray[np.float64]:
        """sigmoid(X @ w + b) per row; ``columns`` overrides the scorer's column order."""
        columns = self.columns if columns is None else columns
        _check_matrix(X, columns)
        z = X @ self.aligned(columns) + self.weights.intercept
        return _sigmoid(z.astype(np.float64, copy=False))


@lru_cache(maxsize=64)
def _heuristic_vector(columns: tuple[str, ...]) -> NDArray[np.float64]:
    return _read_only(np.array([HEURISTIC_WEIGHTS.get(c, 0.0) for c in columns]))


def heuristic_scores(columns: Sequence[str], X: Matrix) -> NDArray[np.float64]:
    """The cold-model ranking: :data:`HEURISTIC_WEIGHTS` blended over whichever of its
    columns ``X`` has (others weigh 0). A ranking score, not a probability.

    Examples:
        >>> heuristic_scores(["cos_session", "n_sources"], np.array([[0.5, 2.0]])).tolist()
        [0.9]
    """
    _check_matrix(X, columns)
    return np.asarray(X @ _heuristic_vector(tuple(columns)), dtype=np.float64)


class RankerStore:
    """Ranker parts in one hash (part → JSON); readers get the combined model.

    Examples:
        >>> from features.stores.memory_store import InMemoryStore
        >>> rankers, store, batch = RankerStore(Keys("r")), InMemoryStore(), WriteBatch()
        >>> rankers.save(batch, "p0", RankerWeights({"x": 1.0}, 0.0, 1, 1))
        >>> rankers.save(batch, "p1", RankerWeights({"x": 3.0}, 0.0, 1, 0))
        >>> store.commit(batch)
        >>> rankers.load(store).weights
        {'x': 2.0}
    """

    def __init__(self, keys: Keys) -> None:
        self.keys = keys

    def save(self, batch: WriteBatch, part: str, weights: RankerWeights) -> None:
        """Queue one part's weights, committed with the offsets of the examples it learned."""
        batch.hset(self.keys.ranker(), {part: weights.to_json().decode()})

    def load_parts(self, store: Store) -> dict[str, RankerWeights]:
        """Every readable part; a corrupt one is logged and skipped so serving goes on."""
        parts: dict[str, RankerWeights] = {}
        for part, raw in sorted(store.hgetall(self.keys.ranker()).items()):
            try:
                parts[part] = RankerWeights.from_json(raw)
            except ValueError as exc:
                log.warning("skipping corrupt ranker part %r: %s", part, exc)
        return parts

    def load(self, store: Store) -> RankerWeights:
        """The parts combined (empty when there are none)."""
        return combine(list(self.load_parts(store).values()))
