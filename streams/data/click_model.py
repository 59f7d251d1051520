"""A position-based click model (PBM) for simulated users, and the regret it implies.

A user examines position ``k`` (0 = top) with probability ``examination(k) = (1 + k)^-eta``
and, having examined it, clicks with probability ``attractiveness(relevance)``, so

    P(click at k) = examination(k) × attractiveness(relevance of the item at k).

Relevance is ground truth (:meth:`streams.data.simulator.StreamSimulator.relevance`), so the
expected clicks of any slate are known exactly, and so is the best slate of the same size
from the same candidates: their difference is the regret of whoever chose the slate.
Under the PBM the best slate puts the most attractive candidates in the most examined
positions (the rearrangement inequality), so it is a sort.

Pure and seeded: no I/O, and the same seed with the same calls gives the same clicks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from streams.schema import ContextValue, Interaction, InteractionType

#: Ground truth: relevance in [0, 1] of an item (second) to a user (first).
RelevanceFn = Callable[[str, str], float]
#: The same for many items at once (e.g. :meth:`StreamSimulator.relevances`), to be fast.
BatchRelevanceFn = Callable[[str, Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class ClickModelConfig:
    """How simulated users look at a feed and click."""

    # examination(k) = (1 + k)^-eta: how fast attention falls down the feed.
    eta: float = 1.0
    # attractiveness(r) = floor + (ceiling − floor)·r: the click chance of an examined item.
    attractiveness_floor: float = 0.0
    attractiveness_ceiling: float = 0.8
    # Examined but not clicked: a skip with this chance, else a view (when views are on).
    skip_probability: float = 0.2
    # Whether examined-but-not-clicked items are reported as views (they mark items seen).
    emit_views: bool = True
    # Mean dwell on a clicked item at relevance 0 and at relevance 1, in milliseconds.
    dwell_ms_min: float = 2_000.0
    dwell_ms_max: float = 30_000.0

    def __post_init__(self) -> None:
        if self.eta < 0:
            raise ValueError("eta must be >= 0")
        if not 0.0 <= self.attractiveness_floor <= self.attractiveness_ceiling <= 1.0:
            raise ValueError("need 0 <= attractiveness_floor <= attractiveness_ceiling <= 1")
        if not 0.0 <= self.skip_probability <= 1.0:
            raise ValueError("skip_probability must be within [0, 1]")


def _as_array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


class PositionBasedModel:
    """Simulated clicks on served slates: P(click at k) = examination(k) × attractiveness.

    Examples:
        Attractiveness equals relevance here (ceiling 1), so sums are easy to check by hand:

        >>> relevance = {"a": 1.0, "b": 0.5, "c": 0.0}
        >>> config = ClickModelConfig(attractiveness_ceiling=1.0)
        >>> model = PositionBasedModel(lambda user, item: relevance[item], config, seed=3)
        >>> [round(model.examination(k), 3) for k in range(3)]
        [1.0, 0.5, 0.333]
        >>> model.expected_clicks("u1", ["b", "a"])  # 1·0.5 + 0.5·1.0
        1.0
        >>> model.best_expected_clicks("u1", ["a", "b", "c"], k=2)  # 1·1.0 + 0.5·0.5
        1.25
        >>> model.regret("u1", ["b", "a"], candidates=["a", "b", "c"])
        0.25
        >>> events = model.respond("u1", ["a", "b", "c"], request_id="r1", ts_ms=1_000)
        >>> [(e.item_id, e.type, e.position, e.request_id) for e in events][:1]
        [('a', 'click', 0, 'r1')]
        >>> again = PositionBasedModel(lambda user, item: relevance[item], config, seed=3)
        >>> again.respond("u1", ["a", "b", "c"], request_id="r1", ts_ms=1_000) == events
        True
    """

    def __init__(
        self,
        relevance: RelevanceFn,
        config: ClickModelConfig | None = None,
        seed: int = 0,
        *,
        batch_relevance: BatchRelevanceFn | None = None,
    ) -> None:
        self.relevance = relevance
        self.batch_relevance = batch_relevance
        self.config = config or ClickModelConfig()
        self.rng = np.random.default_rng(seed)

    # --- the model ---------------------------------------------------------------------

    def examination(self, position: int) -> float:
        """Chance that the user looks at position ``position`` (0 = top)."""
        return float(self.examinations(position + 1)[-1])

    def examinations(self, k: int) -> np.ndarray:
        """Examination chances of positions ``0 … k−1``."""
        result: np.ndarray = (1.0 + np.arange(k, dtype=np.float64)) ** -self.config.eta
        return result

    def attractiveness(self, relevance: Sequence[float] | np.ndarray) -> np.ndarray:
        """Click chance of an examined item of each relevance."""
        c = self.config
        r = np.clip(_as_array(relevance), 0.0, 1.0)
        result: np.ndarray = (
            c.attractiveness_floor + (c.attractiveness_ceiling - c.attractiveness_floor) * r
        )
        return result

    def relevances(self, user_id: str, items: Sequence[str]) -> np.ndarray:
        """Ground-truth relevance of each item to the user."""
        if self.batch_relevance is not None:
            return _as_array(self.batch_relevance(user_id, items))
        return _as_array([self.relevance(user_id, item) for item in items])

    def click_probabilities(self, user_id: str, slate: Sequence[str]) -> np.ndarray:
        """P(click) at each position of the served slate."""
        probabilities: np.ndarray = self.examinations(len(slate)) * self.attractiveness(
            self.relevances(user_id, slate)
        )
        return probabilities

    # --- simulated behaviour -----------------------------------------------------------

    def clicks(self, user_id: str, slate: Sequence[str]) -> tuple[list[int], list[int]]:
        """(clicked positions, examined-but-not-clicked positions) of one look at the slate."""
        relevance = self.relevances(user_id, slate)
        # Always draw both for every position, so a slate's draws never depend on outcomes.
        examined = self.rng.random(len(slate)) < self.examinations(len(slate))
        attracted = self.rng.random(len(slate)) < self.attractiveness(relevance)
        clicked = [k for k in range(len(slate)) if examined[k] and attracted[k]]
        passed = [k for k in range(len(slate)) if examined[k] and not attracted[k]]
        return clicked, passed

    def respond(
        self,
        user_id: str,
        slate: Sequence[str],
        *,
        request_id: str,
        ts_ms: int,
        session_id: str | None = None,
        context: Mapping[str, ContextValue] | None = None,
        spacing_ms: int = 1_500,
    ) -> list[Interaction]:
        """The events a user sends back after seeing ``slate`` (served at ``ts_ms``), in
        position order: clicks, plus skips and views of examined items they passed over.

        Each carries the feed's ``request_id`` and its position; the item at position ``k``
        is reached ``(k + 1) · spacing_ms`` after the feed was served.
        """
        c = self.config
        relevance = self.relevances(user_id, slate)
        clicked, passed = self.clicks(user_id, slate)
        skips = self.rng.random(len(slate)) < c.skip_probability
        dwell = self.rng.exponential(1.0, size=len(slate))
        kinds: dict[int, InteractionType] = {k: "click" for k in clicked}
        for k in passed:
            if skips[k]:
                kinds[k] = "skip"
            elif c.emit_views:
                kinds[k] = "view"
        events = []
        for k in sorted(kinds):
            mean_dwell = c.dwell_ms_min + (c.dwell_ms_max - c.dwell_ms_min) * relevance[k]
            events.append(
                Interaction(
                    # One event per position of a feed: the pair is a unique, stable id.
                    event_id=f"{request_id}:{k}",
                    user_id=user_id,
                    item_id=slate[k],
                    type=kinds[k],
                    ts=ts_ms + (k + 1) * spacing_ms,
                    session_id=session_id,
                    request_id=request_id,
                    position=k,
                    dwell_ms=int(dwell[k] * mean_dwell) if kinds[k] == "click" else None,
                    context=dict(context or {}),
                )
            )
        return events

    # --- regret ------------------------------------------------------------------------

    def expected_clicks(self, user_id: str, slate: Sequence[str]) -> float:
        """Expected clicks on the slate as served, in its order."""
        return float(self.click_probabilities(user_id, slate).sum())

    def best_expected_clicks(self, user_id: str, candidates: Sequence[str], k: int) -> float:
        """Expected clicks of the best slate of ``k`` items from ``candidates``."""
        return best_expected_clicks(
            self.examinations(k), self.attractiveness(self.relevances(user_id, candidates))
        )

    def regret(self, user_id: str, slate: Sequence[str], candidates: Sequence[str]) -> float:
        """Best expected clicks from ``candidates`` (which should include the slate's items)
        at the slate's length, minus the slate's own: 0 for a perfect slate."""
        best = self.best_expected_clicks(user_id, candidates, len(slate))
        return best - self.expected_clicks(user_id, slate)


def best_expected_clicks(
    examination: Sequence[float] | np.ndarray, attractiveness: Sequence[float] | np.ndarray
) -> float:
    """The most expected clicks any ordering achieves: the most attractive items in the
    most examined positions.

    Examples:
        >>> best_expected_clicks([1.0, 0.5], [0.1, 0.4, 0.2])
        0.5
    """
    exam = np.sort(_as_array(examination))[::-1]
    attr = np.sort(_as_array(attractiveness))[::-1][: len(exam)]
    return float(exam[: len(attr)] @ attr)
