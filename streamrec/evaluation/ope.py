"""Off-policy estimates of a target policy's mean reward from logged bandit rounds.

Pure numpy, no I/O. One *round* is one logged decision: a context ``x`` (a segment, a slot
position), the action ``a`` the logging policy took with propensity ``p(a|x)``, the reward
``r``, and the target policy's probability ``pi(a|x)`` of that same action. With the
importance weight ``w = pi(a|x) / p(a|x)``:

- **IPS** ``mean(w r)``: unbiased whenever ``p > 0`` wherever ``pi > 0``; high variance.
- **SNIPS** ``sum(w r) / sum(w)``: slightly biased, far less variance when weights are large.
- **DR** ``mean(qhat_pi(x) + w (r - qhat(x, a)))``: a reward model ``qhat`` as a control
  variate; unbiased like IPS, less variance when ``qhat`` is good.

:func:`estimate` gives each with a percentile-bootstrap 95% interval over logged rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Most bootstrap values held in memory at once (resamples x rounds); bounds memory to ~100 MB.
_BOOTSTRAP_CHUNK = 2_000_000


@dataclass(frozen=True)
class LoggedBandit:
    """Logged rounds and the target policy's probability of each logged action.

    ``q_logged`` is a reward model's prediction for the logged action and ``q_target`` its
    expectation under the target policy, ``sum_a pi(a|x) qhat(x, a)``; both or neither.

    Examples:
        >>> data = LoggedBandit.of(context=[0, 0], action=[1, 0], reward=[1.0, 0.0],
        ...                        pscore=[0.5, 0.5], target=[1.0, 0.0])
        >>> data.n, ips(data), snips(data)
        (2, 1.0, 1.0)
    """

    context: IntArray
    action: IntArray
    reward: FloatArray
    pscore: FloatArray
    target: FloatArray
    q_logged: FloatArray | None = None
    q_target: FloatArray | None = None

    def __post_init__(self) -> None:
        n = len(self.reward)
        arrays = [self.context, self.action, self.pscore, self.target]
        arrays += [a for a in (self.q_logged, self.q_target) if a is not None]
        if any(a.shape != (n,) for a in arrays):
            raise ValueError("every array of a LoggedBandit must have one value per round")
        if (self.q_logged is None) != (self.q_target is None):
            raise ValueError("give both q_logged and q_target, or neither")
        if n and not (np.all(self.pscore > 0) and np.all(self.pscore <= 1)):
            raise ValueError("logging propensities must lie in (0, 1]")
        if n and not (np.all(self.target >= 0) and np.all(self.target <= 1)):
            raise ValueError("target probabilities must lie in [0, 1]")

    @classmethod
    def of(
        cls,
        *,
        context: npt.ArrayLike,
        action: npt.ArrayLike,
        reward: npt.ArrayLike,
        pscore: npt.ArrayLike,
        target: npt.ArrayLike,
        q_logged: npt.ArrayLike | None = None,
        q_target: npt.ArrayLike | None = None,
    ) -> LoggedBandit:
        """Build from array-likes, converting each to the right dtype."""

        def floats(a: npt.ArrayLike | None) -> FloatArray | None:
            return None if a is None else np.asarray(a, dtype=np.float64)

        return cls(
            np.asarray(context, dtype=np.int64),
            np.asarray(action, dtype=np.int64),
            np.asarray(reward, dtype=np.float64),
            np.asarray(pscore, dtype=np.float64),
            np.asarray(target, dtype=np.float64),
            floats(q_logged),
            floats(q_target),
        )

    @property
    def n(self) -> int:
        """Number of logged rounds."""
        return len(self.reward)

    @property
    def weights(self) -> FloatArray:
        """Importance weights ``pi(a|x) / p(a|x)`` of the logged actions."""
        return self.target / self.pscore


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate and its bootstrap interval."""

    value: float
    low: float
    high: float

    def covers(self, x: float) -> bool:
        """Whether ``x`` lies inside the interval."""
        return self.low <= x <= self.high

    def as_dict(self) -> dict[str, float]:
        """Plain numbers, for JSON."""
        return {"value": self.value, "low": self.low, "high": self.high}


def on_policy(data: LoggedBandit) -> float:
    """The logging policy's own mean reward (no weighting)."""
    return float(np.mean(data.reward))


def ips(data: LoggedBandit) -> float:
    """Inverse propensity scoring: ``mean(w r)``."""
    return float(np.mean(data.weights * data.reward))


def snips(data: LoggedBandit) -> float:
    """Self-normalised IPS: ``sum(w r) / sum(w)`` (NaN when every weight is 0)."""
    w = data.weights
    total = float(np.sum(w))
    return float(np.sum(w * data.reward)) / total if total > 0 else float("nan")


def doubly_robust(data: LoggedBandit) -> float:
    """Doubly robust: the reward model's value plus IPS of its residuals."""
    if data.q_logged is None or data.q_target is None:
        raise ValueError("doubly_robust needs reward-model predictions (q_logged, q_target)")
    return float(np.mean(data.q_target + data.weights * (data.reward - data.q_logged)))


def _terms(data: LoggedBandit) -> FloatArray:
    """Per-round terms whose means give every estimator (see :func:`_from_means`)."""
    w, r = data.weights, data.reward
    columns = [r, w * r, w]
    if data.q_logged is not None and data.q_target is not None:
        columns.append(data.q_target + w * (r - data.q_logged))
    return np.stack(columns, axis=1)


def _from_means(means: FloatArray) -> dict[str, FloatArray]:
    """Each estimator from the column means of :func:`_terms` (last axis)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "on_policy": means[..., 0],
            "ips": means[..., 1],
            "snips": means[..., 1] / means[..., 2],
        }
    if means.shape[-1] > 3:
        out["dr"] = means[..., 3]
    return out


def estimate(
    data: LoggedBandit, *, n_bootstrap: int = 1000, seed: int, level: float = 0.95
) -> dict[str, Estimate]:
    """Every estimator (``on_policy``, ``ips``, ``snips``, and ``dr`` when the reward model is
    given) with a percentile-bootstrap interval resampling logged rounds.

    The reward model is held fixed across resamples: the interval leaves out the
    variability of refitting it (as is usual for DR).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> action = rng.integers(0, 2, 4000)                # uniform logging over 2 actions
        >>> reward = (rng.random(4000) < np.where(action == 1, 0.3, 0.1)).astype(float)
        >>> data = LoggedBandit.of(context=np.zeros(4000), action=action, reward=reward,
        ...                        pscore=np.full(4000, 0.5), target=(action == 1) * 1.0)
        >>> est = estimate(data, n_bootstrap=200, seed=1)
        >>> sorted(est), est["ips"].covers(0.3), est["on_policy"].covers(0.2)
        (['ips', 'on_policy', 'snips'], True, True)
    """
    if data.n == 0:
        raise ValueError("no logged rounds to estimate from")
    if not 0 < level < 1:
        raise ValueError("level must lie in (0, 1)")
    terms = _terms(data)
    points = _from_means(terms.mean(axis=0))
    boot = _bootstrap_means(terms, n_bootstrap, seed)
    spread = _from_means(boot)
    tails = [(1 - level) / 2, (1 + level) / 2]
    out: dict[str, Estimate] = {}
    for name, value in points.items():
        finite = spread[name][np.isfinite(spread[name])]
        low, high = np.quantile(finite, tails) if finite.size else (np.nan, np.nan)
        out[name] = Estimate(float(value), float(low), float(high))
    return out


def _bootstrap_means(terms: FloatArray, n_bootstrap: int, seed: int) -> FloatArray:
    """Column means of ``n_bootstrap`` resamples (with replacement) of the rows of ``terms``."""
    if n_bootstrap < 1:
        raise ValueError("n_bootstrap must be at least 1")
    n = len(terms)
    rng = np.random.default_rng(seed)
    # Resamples are drawn in chunks of whole resamples, so memory stays bounded for large logs
    # while each chunk is still one vectorised gather.
    per_chunk = max(1, _BOOTSTRAP_CHUNK // n)
    out = np.empty((n_bootstrap, terms.shape[1]))
    for start in range(0, n_bootstrap, per_chunk):
        stop = min(n_bootstrap, start + per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = terms[idx].mean(axis=1)
    return out


def weight_diagnostics(data: LoggedBandit) -> dict[str, float]:
    """How trustworthy the weights are: their mean (about 1 when the target's support is
    covered), their largest value, and Kish's effective sample size ``sum(w)^2 / sum(w^2)``.

    Examples:
        >>> data = LoggedBandit.of(context=[0, 0], action=[0, 1], reward=[0, 1],
        ...                        pscore=[0.5, 0.5], target=[1.0, 0.0])
        >>> weight_diagnostics(data)
        {'rounds': 2.0, 'mean_weight': 1.0, 'max_weight': 2.0, 'effective_rounds': 1.0}
    """
    w = data.weights
    squares = float(np.sum(w * w))
    return {
        "rounds": float(data.n),
        "mean_weight": float(np.mean(w)) if data.n else float("nan"),
        "max_weight": float(np.max(w)) if data.n else float("nan"),
        "effective_rounds": float(np.sum(w)) ** 2 / squares if squares > 0 else 0.0,
    }


def cell_mean_model(
    context: IntArray,
    action: IntArray,
    reward: FloatArray,
    target_probs: FloatArray,
    *,
    prior_weight: float = 10.0,
    folds: int = 5,
    seed: int,
) -> tuple[FloatArray, FloatArray]:
    """A reward model for DR: the mean reward per (context, action), shrunk towards the
    context's mean by ``prior_weight`` pseudo-rounds, so sparse cells stay sensible.

    ``target_probs[i, a]`` is the target's probability of action ``a`` in round ``i``.
    Returns ``(q_logged, q_target)``. With ``folds > 1`` the model is *cross-fitted*: each
    round is predicted by a model fitted on the other folds. (Fitted in-sample on a uniform
    log, the per-cell residuals sum to zero and DR would collapse onto DM.)

    Examples:
        >>> q_logged, q_target = cell_mean_model(
        ...     np.array([0, 0, 0, 0]), np.array([0, 0, 1, 1]), np.array([1.0, 1.0, 0.0, 0.0]),
        ...     np.array([[1.0, 0.0]] * 4), prior_weight=0.0, folds=1, seed=0)
        >>> q_logged.tolist(), q_target.tolist()
        ([1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0])
    """
    n, n_actions = target_probs.shape
    if not (len(context) == len(action) == len(reward) == n):
        raise ValueError("context, action, reward and target_probs must have one row per round")
    if folds < 1 or prior_weight < 0:
        raise ValueError("folds must be >= 1 and prior_weight >= 0")
    n_contexts = int(context.max()) + 1 if n else 0
    fold = np.random.default_rng(seed).permutation(n) % folds if folds > 1 else np.zeros(n, int)
    q_logged, q_target = np.empty(n), np.empty(n)
    for k in range(folds):
        test = fold == k
        train = ~test if folds > 1 else test
        table = cell_means(
            context[train], action[train], reward[train], (n_contexts, n_actions), prior_weight
        )
        q_logged[test] = table[context[test], action[test]]
        q_target[test] = np.sum(target_probs[test] * table[context[test]], axis=1)
    return q_logged, q_target


def cell_means(
    context: IntArray,
    action: IntArray,
    reward: FloatArray,
    shape: tuple[int, int],
    prior_weight: float,
) -> FloatArray:
    """``table[context, action]``: mean reward shrunk towards the context's mean (itself
    shrunk towards the overall mean) by ``prior_weight`` pseudo-rounds.

    Examples:
        >>> cell_means(np.array([0, 0, 0]), np.array([0, 0, 1]), np.array([1.0, 0.0, 1.0]),
        ...            (1, 3), 0.0).tolist()
        [[0.5, 1.0, 0.6666666666666666]]
    """
    n_contexts, n_actions = shape
    cell = context * n_actions + action
    size = n_contexts * n_actions
    counts = np.bincount(cell, minlength=size).reshape(n_contexts, n_actions)
    sums = np.bincount(cell, weights=reward, minlength=size).reshape(n_contexts, n_actions)
    overall = float(np.mean(reward)) if len(reward) else 0.0
    # The context's own mean stands in for cells with no rounds (and no prior) at all.
    ctx_mean = (sums.sum(axis=1) + prior_weight * overall) / (counts.sum(axis=1) + prior_weight)
    ctx_mean = np.where(np.isfinite(ctx_mean), ctx_mean, overall)
    with np.errstate(divide="ignore", invalid="ignore"):
        table = (sums + prior_weight * ctx_mean[:, None]) / (counts + prior_weight)
    return np.where(counts + prior_weight > 0, table, ctx_mean[:, None])
