"""Validating the off-policy estimators on real logged bandit data: the Open Bandit Dataset.

The small sample of the Open Bandit Dataset (ZOZO Research; Saito et al., NeurIPS 2021
Datasets track; Apache-2.0) ships inside the ``obp`` 0.4.1 wheel on PyPI. We fetch that wheel
with pip and check its SHA-256 (:mod:`streamrec.evaluation.wheels`), and read its files with
:mod:`zipfile`; obp itself is never imported (it breaks on current numpy and pandas).

Two logging policies ran on the same ZOZOTOWN fashion-item slots in the same week: uniform
*random* and *Bernoulli Thompson sampling* (BTS). Each CSV row is one (impression, position)
round: ``item_id``, ``position`` (1-3), ``click``, and the logging policy's
``propensity_score``. BTS's production Beta priors are ``obp/policy/conf/prior_bts.yaml``.

The check (:func:`validate_obd`): compute BTS's action distribution from that prior by Monte
Carlo exactly as obp's ``BernoulliTS(is_zozotown_prior=True).compute_batch_action_dist``
does (draw ``Beta(alpha_i, beta_i)`` for every item, rank items by the draw, the item at
position k is the k-th ranked one), estimate BTS's click-rate from the *random* log with IPS,
SNIPS and DR, and compare with the click-rate BTS actually achieved in its own log.
"""

from __future__ import annotations

import csv
import io
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.evaluation.ope import (
    FloatArray,
    IntArray,
    LoggedBandit,
    cell_mean_model,
    estimate,
    weight_diagnostics,
)
from streamrec.evaluation.wheels import PyPIUnreachableError as PyPIUnreachableError
from streamrec.evaluation.wheels import WheelFetchError, fetch_pinned_wheel

OBP_VERSION = "0.4.1"
WHEEL_NAME = f"obp-{OBP_VERSION}-py3-none-any.whl"
#: The wheel PyPI serves for obp 0.4.1; a different file is refused.
WHEEL_SHA256 = "87dec9caf4283c25ab13036532e0a24566f1c7bdcad1653a8ded43b2f5ef8208"
DEFAULT_CACHE_DIR = Path(".streamrec/cache/obp")
PRIOR_MEMBER = "obp/policy/conf/prior_bts.yaml"
#: Slots per impression in ZOZOTOWN's recommendation widget.
LEN_LIST = 3


class ObdError(WheelFetchError):
    """The Open Bandit Dataset could not be fetched or read."""


class ObdUnreachableError(ObdError, PyPIUnreachableError):
    """The obp wheel cannot be downloaded because PyPI cannot be reached."""


def fetch_wheel(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """The obp wheel, downloaded once by pip into ``cache_dir`` and checked by SHA-256.

    Every failure is an :class:`ObdError`; an unreachable PyPI is also a
    :class:`PyPIUnreachableError`.
    """
    try:
        return fetch_pinned_wheel("obp", OBP_VERSION, WHEEL_NAME, WHEEL_SHA256, cache_dir)
    except PyPIUnreachableError as exc:
        raise ObdUnreachableError(str(exc)) from None
    except WheelFetchError as exc:
        raise ObdError(str(exc)) from None


def parse_prior(text: str) -> dict[str, dict[str, list[float]]]:
    """``prior_bts.yaml``: per campaign, ``alpha`` and ``beta`` lists of floats.

    The file is a two-level mapping of number lists; this reads exactly that subset of YAML
    (so pyyaml need not be a runtime dependency) and refuses anything else.

    Examples:
        >>> parse_prior("all:\\n  alpha:\\n    - 1.0\\n    - 2\\n  beta:\\n    - 3.5\\n")
        {'all': {'alpha': [1.0, 2.0], 'beta': [3.5]}}
    """
    out: dict[str, dict[str, list[float]]] = {}
    campaign: dict[str, list[float]] | None = None
    values: list[float] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        body = line.strip()
        if not body or body.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0 and body.endswith(":"):
            campaign, values = out.setdefault(body[:-1], {}), None
        elif indent == 2 and body.endswith(":") and campaign is not None:
            values = campaign.setdefault(body[:-1], [])
        elif indent > 2 and body.startswith("- ") and values is not None:
            values.append(float(body[2:]))
        else:
            raise ObdError(f"unexpected line {number} of {PRIOR_MEMBER}: {line!r}")
    return out


def read_prior(wheel: Path, campaign: str = "all") -> tuple[FloatArray, FloatArray]:
    """BTS's production Beta prior ``(alpha, beta)`` per item for ``campaign``."""
    with zipfile.ZipFile(wheel) as zf:
        prior = parse_prior(zf.read(PRIOR_MEMBER).decode())
    if campaign not in prior:
        raise ObdError(f"no campaign {campaign!r} in {PRIOR_MEMBER} (has {sorted(prior)})")
    alpha, beta = (np.asarray(prior[campaign][k], dtype=np.float64) for k in ("alpha", "beta"))
    if alpha.shape != beta.shape or not (np.all(alpha > 0) and np.all(beta > 0)):
        raise ObdError(f"{PRIOR_MEMBER}: alpha and beta of {campaign!r} do not match")
    return alpha, beta


@dataclass(frozen=True)
class ObdLog:
    """One logging policy's rounds, in time order; positions dense-ranked to 0..2 (as obp)."""

    item: IntArray
    position: IntArray
    click: FloatArray
    pscore: FloatArray

    @property
    def n(self) -> int:
        """Number of rounds."""
        return len(self.click)


def read_log(wheel: Path, policy: str, campaign: str = "all") -> ObdLog:
    """The ``policy`` (``random`` or ``bts``) log of ``campaign`` from the wheel."""
    member = f"obp/dataset/obd/{policy}/{campaign}/{campaign}.csv"
    with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
            raise ObdError(f"{WHEEL_NAME} has no {member}")
        with zf.open(member) as raw:
            rows = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
            header = next(rows)
            cols = [header.index(c) for c in ("timestamp", "item_id", "position", "click")]
            cols.append(header.index("propensity_score"))
            table = [[row[c] for c in cols] for row in rows]
    if not table:
        raise ObdError(f"{member} is empty")
    ts, item, position, click, pscore = zip(*table, strict=True)
    order = np.argsort(np.asarray(ts), kind="stable")  # obp sorts by timestamp too
    _, dense = np.unique(np.asarray(position, dtype=np.int64), return_inverse=True)
    return ObdLog(
        np.asarray(item, dtype=np.int64)[order],
        dense.astype(np.int64)[order],
        np.asarray(click, dtype=np.float64)[order],
        np.asarray(pscore, dtype=np.float64)[order],
    )


def bts_action_dist(
    alpha: FloatArray, beta: FloatArray, *, n_sim: int, seed: int, len_list: int = LEN_LIST
) -> FloatArray:
    """``dist[item, position]``: how often Thompson sampling from the Beta priors puts each
    item at each position, over ``n_sim`` simulated impressions (as obp computes it).

    Examples:
        >>> dist = bts_action_dist(np.array([50.0, 1.0, 1.0]), np.array([1.0, 50.0, 50.0]),
        ...                        n_sim=1000, seed=0, len_list=2)
        >>> dist[0].tolist(), dist.sum(axis=0).tolist()
        ([1.0, 0.0], [1.0, 1.0])
    """
    n_items = len(alpha)
    if not 1 <= len_list <= n_items or n_sim < 1:
        raise ValueError("need 1 <= len_list <= items and n_sim >= 1")
    rng = np.random.default_rng(seed)
    counts = np.zeros(n_items * len_list, dtype=np.int64)
    per_chunk = max(1, 2_000_000 // n_items)  # bounds the draws held at once to ~16 MB
    for start in range(0, n_sim, per_chunk):
        draws = rng.beta(alpha, beta, size=(min(per_chunk, n_sim - start), n_items))
        # The top len_list items by draw, then ordered among themselves: best first.
        top = np.argpartition(-draws, len_list - 1, axis=1)[:, :len_list]
        ranked = np.take_along_axis(top, np.argsort(-np.take_along_axis(draws, top, 1)), 1)
        counts += np.bincount(
            (ranked * len_list + np.arange(len_list)).ravel(), minlength=n_items * len_list
        )
    return counts.reshape(n_items, len_list) / n_sim


def _seeds(seed: int, k: int) -> list[int]:
    """Independent child seeds, one per random step."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(k)]


def _evaluate(
    log: ObdLog,
    dist: FloatArray,
    truth: float,
    *,
    prior_weight: float,
    folds: int,
    n_bootstrap: int,
    seeds: tuple[int, int],
) -> dict[str, Any]:
    """Every estimate of the policy ``dist`` on ``log``, with its error against ``truth``."""
    target_probs = dist.T[log.position]  # (rounds, items): pi(.|position of the round)
    q_logged, q_target = cell_mean_model(
        log.position,
        log.item,
        log.click,
        target_probs,
        prior_weight=prior_weight,
        folds=folds,
        seed=seeds[0],
    )
    data = LoggedBandit(
        log.position,
        log.item,
        log.click,
        log.pscore,
        dist[log.item, log.position],
        q_logged,
        q_target,
    )
    out: dict[str, Any] = {}
    for name, est in estimate(data, n_bootstrap=n_bootstrap, seed=seeds[1]).items():
        if name != "on_policy":
            rel = (est.value - truth) / truth if truth else float("nan")
            out[name] = est.as_dict() | {"rel_error": rel, "covers_truth": est.covers(truth)}
    return {"estimates": out, "weights": weight_diagnostics(data)}


def validate_obd(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    *,
    campaign: str = "all",
    n_sim: int = 100_000,
    n_bootstrap: int = 1000,
    seed: int = 0,
    prior_weight: float = 10.0,
    folds: int = 5,
) -> dict[str, Any]:
    """Estimate BTS's click-rate on the random log and compare with BTS's own log.

    ``estimates`` targets BTS as specified by its production prior. BTS kept learning
    during the week, so ``realised`` repeats the estimates with the distribution BTS
    actually showed (its log's item frequency per position; actions only, no clicks), to
    separate estimator error from the gap between the prior and the policy that ran.
    DR's reward model: mean click per (item, position), shrunk towards the position's mean
    by ``prior_weight`` pseudo-rounds, ``folds``-fold cross-fitted.
    """
    started = time.perf_counter()
    wheel = fetch_wheel(cache_dir)
    fetched = time.perf_counter()
    alpha, beta = read_prior(wheel, campaign)
    random_log, bts_log = read_log(wheel, "random", campaign), read_log(wheel, "bts", campaign)
    for log in (random_log, bts_log):
        if log.item.max() >= len(alpha) or log.position.max() >= LEN_LIST:
            raise ObdError("the logs name items or positions that the prior does not")
    read = time.perf_counter()
    mc_seed, fold_seed, boot_seed, real_fold, real_boot, ctr_seed = _seeds(seed, 6)
    dist = bts_action_dist(alpha, beta, n_sim=n_sim, seed=mc_seed)
    simulated = time.perf_counter()
    ctr = {
        name: estimate(_on_policy_data(log), n_bootstrap=n_bootstrap, seed=ctr_seed)["on_policy"]
        for name, log in (("random", random_log), ("bts", bts_log))
    }
    truth = ctr["bts"].value
    shown = _realised_dist(bts_log, len(alpha))
    prior_run, realised = (
        _evaluate(
            random_log,
            target,
            truth,
            prior_weight=prior_weight,
            folds=folds,
            n_bootstrap=n_bootstrap,
            seeds=seeds,
        )
        for target, seeds in ((dist, (fold_seed, boot_seed)), (shown, (real_fold, real_boot)))
    )
    done = time.perf_counter()
    return {
        "campaign": campaign,
        "obp_version": OBP_VERSION,
        "wheel_sha256": WHEEL_SHA256,
        "rounds": {"random": random_log.n, "bts": bts_log.n},
        "clicks": {"random": int(random_log.click.sum()), "bts": int(bts_log.click.sum())},
        "random_ctr": ctr["random"].as_dict(),
        "bts_ctr": ctr["bts"].as_dict(),
        **prior_run,
        "action_dist": {
            "n_sim": n_sim,
            "position_sums": dist.sum(axis=0).tolist(),
            # Half the L1 distance per position between the prior's distribution and what
            # BTS showed: 0 if BTS had kept its prior all week.
            "tv_to_realised": (0.5 * np.abs(dist - shown).sum(axis=0)).tolist(),
        },
        "realised": realised,
        "reward_model": f"mean click per (item, position), shrunk to the position mean by"
        f" {prior_weight:g} pseudo-rounds, {folds}-fold cross-fitted",
        "seed": seed,
        "n_bootstrap": n_bootstrap,
        "seconds": {
            "fetch": fetched - started,
            "read": read - fetched,
            "action_dist": simulated - read,
            "estimate": done - simulated,
            "total": done - started,
        },
    }


def _on_policy_data(log: ObdLog) -> LoggedBandit:
    """The log as rounds whose target is the logging policy itself (weights of 1)."""
    return LoggedBandit(log.position, log.item, log.click, log.pscore, log.pscore)


def _realised_dist(log: ObdLog, n_items: int) -> FloatArray:
    """``dist[item, position]``: how often the log shows each item at each position."""
    counts = np.zeros((n_items, LEN_LIST))
    np.add.at(counts, (log.item, log.position), 1.0)
    dist: FloatArray = counts / counts.sum(axis=0, keepdims=True)
    return dist
