"""Off-policy evaluation of source-ordering policies from streamrec's own event logs.

Reads JSONL files of events (impressions and interactions, in any order), joins clicks to
served slots exactly as the worker does (:class:`features.attribution.Attribution`: by
``request_id``, else the user's latest feed that showed the item, within
``learning.attribution_window_s``), and turns every bandit-filled slot into one round:

- context: the impression's ``segment``;
- action: the slot's ``source``, logged with probability ``propensity``;
- available actions: the keys of the slot's ``source_probabilities``;
- reward: whether the slot was clicked (an interaction of a ``learning.reward_types`` type).

Pinned and exploration slots carry no ``source_probabilities`` and are skipped: no policy
over sources chose them. Each slot is treated as its own round, as the bandit treats it; a
policy that picks another source would also have shown another item, and the estimate
assumes a slot's click depends on its source only through that item.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from features.attribution import Attribution, OpenImpression
from features.keys import Keys
from features.settings import LearningSettings
from streamrec.evaluation.ope import (
    FloatArray,
    IntArray,
    LoggedBandit,
    cell_mean_model,
    cell_means,
    estimate,
    weight_diagnostics,
)
from streams.data.jsonl import read_events
from streams.schema import EventValidator, Impression, Interaction
from streams.worker.feedback import open_record

BoolArray = npt.NDArray[np.bool_]

#: Pseudo-rounds pulling a (segment, source) click-rate towards its segment's mean: a small
#: prior, so that a source seen a handful of times does not look perfect (or hopeless).
PRIOR_WEIGHT = 5.0
#: Folds of the cross-fitted reward model of DR.
FOLDS = 5
#: Policy names understood by :func:`target_probs` (plus ``source:<name>``).
POLICIES = ("uniform", "logging", "greedy")


@dataclass(frozen=True)
class SlotRounds:
    """Bandit slots as rounds; sources are indexed in sorted name order."""

    segments: list[str]
    sources: list[str]
    segment: IntArray  # (rounds,) index into segments
    source: IntArray  # (rounds,) index into sources: the logged action
    clicked: FloatArray  # (rounds,) 1.0 if the slot was clicked
    propensity: FloatArray  # (rounds,) the logged probability of the chosen source
    logged_probs: FloatArray  # (rounds, sources) the logged distribution, 0 where unavailable
    available: BoolArray  # (rounds, sources) the sources that could have filled the slot
    counts: dict[str, int]

    @property
    def n(self) -> int:
        """Number of rounds."""
        return len(self.clicked)


def read_rounds(
    paths: Sequence[Path], *, validator: EventValidator, learning: LearningSettings
) -> SlotRounds:
    """Every bandit slot of the impressions in ``paths``, labelled by the clicks there."""
    rejected: Counter[str] = Counter()
    impressions: dict[str, Impression] = {}
    clicks: list[Interaction] = []
    counts: Counter[str] = Counter()
    reward_types = set(learning.reward_types)
    for path in paths:
        with path.open("rb") as lines:
            for event in read_events(lines, validator, rejected):
                if isinstance(event, Impression):
                    if event.request_id in impressions:
                        counts["duplicate_impressions"] += 1
                    else:
                        impressions[event.request_id] = event
                elif isinstance(event, Interaction) and event.type in reward_types:
                    clicks.append(event)
    records = {rid: open_record(imp) for rid, imp in impressions.items()}
    counts["clicks_attributed"] = _attribute(records, clicks, learning)
    counts.update(impressions=len(impressions), clicks=len(clicks))
    counts["rejected_lines"] = sum(rejected.values())
    return _to_rounds(impressions, records, counts)


def _attribute(
    records: dict[str, OpenImpression], clicks: Iterable[Interaction], learning: LearningSettings
) -> int:
    """Mark clicked slots as the worker's feedback processor does; return how many clicks
    marked a slot (a second click on a slot marks nothing)."""
    attribution = Attribution(Keys("ope"), window_s=learning.attribution_window_s)
    by_user: dict[str, list[OpenImpression]] = defaultdict(list)
    for open_feed in records.values():
        by_user[open_feed.user_id].append(open_feed)
    marked = 0
    for click in sorted(clicks, key=lambda c: c.ts):
        record = records.get(click.request_id) if click.request_id else None
        if record is None or record.user_id != click.user_id:
            if click.request_id is not None and click.request_id in records:
                continue  # someone else's feed: the worker drops it too
            record = attribution.match(by_user[click.user_id], click.item_id, click.ts)
        if record is not None and attribution.click(record, click.item_id, click.ts):
            marked += 1
    return marked


def _to_rounds(
    impressions: dict[str, Impression],
    records: dict[str, OpenImpression],
    counts: Counter[str],
) -> SlotRounds:
    rows: list[tuple[str, str, bool, float, dict[str, float]]] = []
    for rid, impression in impressions.items():
        record = records[rid]
        for slot, open_slot in zip(impression.slots, record.slots, strict=True):
            counts["slots"] += 1
            probs = slot.source_probabilities
            if probs is None:
                counts["fixed_slots"] += 1
            elif slot.source not in probs or slot.propensity <= 0:
                counts["bad_slots"] += 1  # no probability for the logged choice: unusable
            else:
                rows.append(
                    (record.segment, slot.source, open_slot.clicked, slot.propensity, probs)
                )
    segments = sorted({r[0] for r in rows})
    sources = sorted({s for r in rows for s in r[4]})
    seg_index = {s: i for i, s in enumerate(segments)}
    src_index = {s: i for i, s in enumerate(sources)}
    logged = np.zeros((len(rows), len(sources)))
    available = np.zeros((len(rows), len(sources)), dtype=bool)
    for i, row in enumerate(rows):
        for name, p in row[4].items():
            logged[i, src_index[name]], available[i, src_index[name]] = p, True
    counts["rounds"] = len(rows)
    return SlotRounds(
        segments,
        sources,
        np.array([seg_index[r[0]] for r in rows], dtype=np.int64),
        np.array([src_index[r[1]] for r in rows], dtype=np.int64),
        np.array([float(r[2]) for r in rows]),
        np.array([r[3] for r in rows], dtype=np.float64),
        logged,
        available,
        dict(counts),
    )


def target_probs(rounds: SlotRounds, policy: str, *, epsilon: float = 0.0) -> FloatArray:
    """``pi[round, source]`` of the named policy, mixed with ``epsilon`` of uniform.

    ``uniform``: uniform over the available sources. ``logging``: the logged distribution
    (a sanity check: its estimates equal the log's click-rate). ``greedy``: the available
    source with the best click-rate per segment on this same log (shrunk by
    :data:`PRIOR_WEIGHT`; ties to the first name; optimistic, as it is fitted on the data it
    is judged on). ``source:<name>``: always ``<name>`` when available, else uniform.

    Examples:
        >>> rounds = SlotRounds(
        ...     ["new|web"], ["fresh", "trending"], np.zeros(2, np.int64), np.array([0, 1]),
        ...     np.array([0.0, 1.0]), np.array([0.5, 0.5]), np.full((2, 2), 0.5),
        ...     np.array([[True, True], [True, False]]), {})
        >>> target_probs(rounds, "source:trending", epsilon=0.2).tolist()
        [[0.1, 0.9], [1.0, 0.0]]
    """
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError("epsilon must lie in [0, 1]")
    avail = rounds.available.astype(np.float64)
    uniform = avail / np.maximum(avail.sum(axis=1, keepdims=True), 1.0)
    if policy == "uniform":
        pi = uniform
    elif policy == "logging":
        pi = rounds.logged_probs / np.maximum(rounds.logged_probs.sum(axis=1, keepdims=True), 1e-12)
    elif policy == "greedy":
        shape = (len(rounds.segments), len(rounds.sources))
        ctr = cell_means(rounds.segment, rounds.source, rounds.clicked, shape, PRIOR_WEIGHT)
        # argmax keeps the first of equal values: sources are in sorted order.
        best = np.argmax(np.where(rounds.available, ctr[rounds.segment], -np.inf), axis=1)
        pi = np.zeros_like(uniform)
        pi[np.arange(rounds.n), best] = 1.0
    elif policy.startswith("source:") and policy[7:] in rounds.sources:
        chosen = rounds.available[:, rounds.sources.index(policy[7:])]
        pi = np.where(chosen[:, None], 0.0, uniform)
        pi[chosen, rounds.sources.index(policy[7:])] = 1.0
    else:
        known = ", ".join([*POLICIES, *(f"source:{s}" for s in rounds.sources)])
        raise ValueError(f"unknown policy {policy!r}; known: {known}")
    mixed: FloatArray = (1.0 - epsilon) * pi + epsilon * uniform
    return mixed


def evaluate_log(
    paths: Sequence[Path],
    policy: str,
    *,
    validator: EventValidator,
    learning: LearningSettings,
    epsilon: float = 0.0,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The named policy's click-rate per slot, estimated from the logs, next to the
    logging policy's own, with bootstrap 95% intervals and weight diagnostics."""
    started = time.perf_counter()
    rounds = read_rounds(paths, validator=validator, learning=learning)
    if rounds.n == 0:
        raise ValueError(f"no bandit slots in {len(paths)} file(s): {rounds.counts}")
    pi = target_probs(rounds, policy, epsilon=epsilon)
    fold_seed, boot_seed = (
        int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(2)
    )
    q_logged, q_target = cell_mean_model(
        rounds.segment,
        rounds.source,
        rounds.clicked,
        pi,
        prior_weight=PRIOR_WEIGHT,
        folds=FOLDS,
        seed=fold_seed,
    )
    data = LoggedBandit(
        rounds.segment,
        rounds.source,
        rounds.clicked,
        rounds.propensity,
        pi[np.arange(rounds.n), rounds.source],
        q_logged,
        q_target,
    )
    est = estimate(data, n_bootstrap=n_bootstrap, seed=boot_seed)
    logged_share = np.bincount(rounds.source, minlength=len(rounds.sources)) / rounds.n
    return {
        "policy": policy,
        "epsilon": epsilon,
        "files": [str(p) for p in paths],
        "counts": rounds.counts,
        "segments": rounds.segments,
        "logging_ctr": est.pop("on_policy").as_dict(),
        "estimates": {name: e.as_dict() for name, e in est.items()},
        "weights": weight_diagnostics(data),
        "source_share": {
            s: {"logged": float(logged_share[i]), "target": float(pi[:, i].mean())}
            for i, s in enumerate(rounds.sources)
        },
        "reward_model": f"mean click per (segment, source), shrunk to the segment mean by"
        f" {PRIOR_WEIGHT:g} pseudo-rounds, {FOLDS}-fold cross-fitted",
        "seed": seed,
        "n_bootstrap": n_bootstrap,
        "seconds": time.perf_counter() - started,
    }
