"""Off-policy estimators on synthetic bandits where the truth is known, and `streamrec ope` on
a synthetic impression log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
import typer
from typer.testing import CliRunner

from features.settings import LearningSettings
from streamrec.commands import ope as ope_command
from streamrec.evaluation.impression_log import evaluate_log, read_rounds, target_probs
from streamrec.evaluation.ope import (
    LoggedBandit,
    cell_mean_model,
    doubly_robust,
    estimate,
    ips,
    snips,
)
from streams.schema import EventValidator, Impression, ImpressionSlot, Interaction, encode

# True click-rates per (context, action): a high baseline with spread, so that the weights'
# noise dominates IPS and self-normalisation or a reward model can remove it.
THETA = np.array([[0.5, 0.6, 0.7, 0.8], [0.3, 0.4, 0.6, 0.9], [0.7, 0.5, 0.6, 0.4]])
CONTEXT_P = np.array([0.5, 0.3, 0.2])
LOGGING = np.array([[0.7, 0.1, 0.1, 0.1], [0.4, 0.4, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
TARGET = np.array([[0.0, 0.0, 0.2, 0.8], [0.0, 0.1, 0.1, 0.8], [0.6, 0.2, 0.2, 0.0]])
TRUE_VALUE = float(CONTEXT_P @ (TARGET * THETA).sum(axis=1))
LOGGING_VALUE = float(CONTEXT_P @ (LOGGING * THETA).sum(axis=1))


def synthetic(n: int, rng: np.random.Generator, *, with_model: bool = True) -> LoggedBandit:
    """``n`` rounds logged by LOGGING, with TARGET's probabilities of the logged actions."""
    context = rng.choice(3, size=n, p=CONTEXT_P)
    cum = LOGGING.cumsum(axis=1)[context]
    action = np.minimum((rng.random(n)[:, None] > cum).sum(axis=1), 3)
    reward = (rng.random(n) < THETA[context, action]).astype(float)
    q = cell_mean_model(context, action, reward, TARGET[context], seed=int(rng.integers(1 << 30)))
    return LoggedBandit.of(
        context=context,
        action=action,
        reward=reward,
        pscore=LOGGING[context, action],
        target=TARGET[context, action],
        q_logged=q[0] if with_model else None,
        q_target=q[1] if with_model else None,
    )


def test_hand_computed_estimates() -> None:
    data = LoggedBandit.of(
        context=[0, 0, 0],
        action=[0, 1, 1],
        reward=[1.0, 0.0, 1.0],
        pscore=[0.5, 0.25, 0.25],
        target=[0.5, 0.5, 0.5],
        q_logged=[0.5, 0.5, 0.5],
        q_target=[0.4, 0.4, 0.4],
    )
    # weights 1, 2, 2
    assert ips(data) == pytest.approx((1 + 0 + 2) / 3)
    assert snips(data) == pytest.approx(3 / 5)
    assert doubly_robust(data) == pytest.approx(0.4 + (0.5 - 1.0 + 1.0) / 3)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="propensities"):
        LoggedBandit.of(context=[0], action=[0], reward=[1], pscore=[0.0], target=[1])
    with pytest.raises(ValueError, match="one value per round"):
        LoggedBandit.of(context=[0], action=[0, 1], reward=[1], pscore=[1], target=[1])
    with pytest.raises(ValueError, match="needs reward-model"):
        doubly_robust(LoggedBandit.of(context=[0], action=[0], reward=[1], pscore=[1], target=[1]))


def test_intervals_are_seeded_and_tell_target_from_logging() -> None:
    data = synthetic(20_000, np.random.default_rng(3))
    est = estimate(data, n_bootstrap=200, seed=7)
    for name in ("ips", "snips", "dr"):
        assert est[name].low < est[name].value < est[name].high
        assert abs(est[name].value - TRUE_VALUE) < 0.03, (name, est[name], TRUE_VALUE)
    # The logging policy's own click-rate is much lower, and its interval says so.
    assert abs(est["on_policy"].value - LOGGING_VALUE) < 0.03
    assert est["on_policy"].high < min(est[name].low for name in ("ips", "snips", "dr"))
    assert estimate(data, n_bootstrap=200, seed=7) == est
    assert estimate(data, n_bootstrap=200, seed=8)["ips"].low != est["ips"].low


def test_unbiased_and_snips_dr_have_less_variance_than_ips() -> None:
    rng = np.random.default_rng(11)
    runs = np.array(
        [[ips(d), snips(d), doubly_robust(d)] for d in (synthetic(1000, rng) for _ in range(300))]
    )
    mean, std = runs.mean(axis=0), runs.std(axis=0)
    # IPS and DR are unbiased: their means sit within 3 standard errors of the truth.
    for k in (0, 2):
        assert abs(mean[k] - TRUE_VALUE) < 3 * std[k] / np.sqrt(len(runs))
    # Rewards far from 0 with spread-out weights: normalising, or a reward model, helps a lot.
    assert std[1] < 0.7 * std[0] and std[2] < 0.7 * std[0], std


def test_95_percent_intervals_cover_the_truth_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(5)
    runs = [estimate(synthetic(2000, rng), n_bootstrap=200, seed=i) for i in range(150)]
    for name, value in [(n, TRUE_VALUE) for n in ("ips", "snips", "dr")] + [
        ("on_policy", LOGGING_VALUE)
    ]:
        coverage = np.mean([run[name].covers(value) for run in runs])
        assert 0.88 <= coverage <= 0.99, (name, coverage)


def test_cross_fitting_keeps_dr_from_collapsing_onto_the_model() -> None:
    # Uniform logging: fitted in-sample, per-cell residuals sum to zero and DR == DM.
    rng = np.random.default_rng(2)
    context, action = np.zeros(400, dtype=np.int64), rng.integers(0, 2, 400)
    reward = (rng.random(400) < np.where(action == 1, 0.6, 0.2)).astype(float)
    pi = np.tile([0.0, 1.0], (400, 1))
    for folds, collapses in ((1, True), (5, False)):
        q_logged, q_target = cell_mean_model(
            context, action, reward, pi, prior_weight=0.0, folds=folds, seed=0
        )
        data = LoggedBandit.of(
            context=context,
            action=action,
            reward=reward,
            pscore=np.full(400, 0.5),
            target=pi[np.arange(400), action],
            q_logged=q_logged,
            q_target=q_target,
        )
        assert bool(doubly_robust(data) == pytest.approx(q_target.mean())) is collapses


# --- streamrec's own impression logs -------------------------------------------------------

SOURCES = ["fresh", "popular", "trending"]
SEGMENT_CTR = {"new|web": [0.05, 0.10, 0.30], "returning|mobile": [0.20, 0.10, 0.05]}
SEGMENT_LOGGING = {"new|web": [0.5, 0.3, 0.2], "returning|mobile": [0.2, 0.3, 0.5]}
VALIDATOR = EventValidator(embedding_dim=8, max_payload_bytes=1 << 20, max_future_ms=10**12)
LEARNING = LearningSettings(attribution_window_s=60.0)
T0 = 1_700_000_000_000


def write_log(path: Path, n_feeds: int, seed: int) -> None:
    """Feeds of 4 slots (the last one pinned) logged by SEGMENT_LOGGING; clicks by SEGMENT_CTR,
    half with the request id, half without; plus decoys that must not count."""
    rng = np.random.default_rng(seed)
    lines: list[bytes] = []
    for f in range(n_feeds):
        segment = list(SEGMENT_CTR)[f % 2]
        user, ts, request_id = f"u{f % 50}", T0 + f * 1000, f"r{f}"
        probs = dict(zip(SOURCES, SEGMENT_LOGGING[segment], strict=True))
        slots, clicks = [], []
        for position in range(4):
            item = f"i{f}-{position}"
            pinned = position == 3
            source = "pinned" if pinned else SOURCES[rng.choice(3, p=SEGMENT_LOGGING[segment])]
            slots.append(
                ImpressionSlot(
                    item_id=item,
                    position=position,
                    source=source,
                    score=1.0,
                    propensity=1.0 if pinned else probs[source],
                    source_probabilities=None if pinned else probs,
                )
            )
            ctr = 0.9 if pinned else SEGMENT_CTR[segment][SOURCES.index(source)]
            if rng.random() < ctr:
                rid = request_id if rng.random() < 0.5 else None
                clicks.append(
                    Interaction(
                        event_id=f"c{f}-{position}",
                        user_id=user,
                        item_id=item,
                        type="click",
                        ts=ts + 5000,
                        request_id=rid,
                    )
                )
        # Decoys: a view (not a reward type), and a click after the window closed.
        clicks.append(
            Interaction(
                event_id=f"v{f}",
                user_id=user,
                item_id=slots[0].item_id,
                type="view",
                ts=ts + 10,
                request_id=request_id,
            )
        )
        clicks.append(
            Interaction(
                event_id=f"l{f}",
                user_id=user,
                item_id=slots[1].item_id,
                type="click",
                ts=ts + 61_000,
                request_id=request_id,
            )
        )
        imp = Impression(
            request_id=request_id,
            user_id=user,
            ts=ts,
            policy="thompson",
            segment=segment,
            slots=slots,
        )
        # Clicks before their impression in the file: the join must not depend on order.
        lines += [encode(c) for c in clicks] + [encode(imp)]
    lines.append(b'{"not": "an event"')
    path.write_bytes(b"\n".join(lines) + b"\n")


def truth(policy_probs: dict[str, list[float]]) -> float:
    return float(np.mean([np.dot(policy_probs[s], SEGMENT_CTR[s]) for s in SEGMENT_CTR]))


@pytest.fixture(scope="module")
def event_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ope") / "events.jsonl"
    write_log(path, 3000, seed=1)
    return path


def test_slots_become_rounds_joined_like_the_worker(event_log: Path) -> None:
    rounds = read_rounds([event_log], validator=VALIDATOR, learning=LEARNING)
    assert rounds.sources == SOURCES and rounds.segments == sorted(SEGMENT_CTR)
    assert rounds.counts["impressions"] == 3000 and rounds.counts["fixed_slots"] == 3000
    assert rounds.n == 9000 and rounds.counts["rejected_lines"] == 1
    # Every in-window click on a bandit or pinned slot is attributed; late clicks are not.
    assert rounds.counts["clicks"] - rounds.counts["clicks_attributed"] == 3000
    assert rounds.available.all() and np.allclose(rounds.logged_probs.sum(axis=1), 1.0)


def test_logging_policy_reproduces_the_log_click_rate(event_log: Path) -> None:
    figures = evaluate_log(
        [event_log], "logging", validator=VALIDATOR, learning=LEARNING, n_bootstrap=200
    )
    ctr = figures["logging_ctr"]["value"]
    assert figures["estimates"]["ips"]["value"] == pytest.approx(ctr)
    assert figures["estimates"]["snips"]["value"] == pytest.approx(ctr)
    assert figures["weights"]["mean_weight"] == pytest.approx(1.0)
    assert abs(ctr - truth(SEGMENT_LOGGING)) < 0.02


@pytest.mark.parametrize(
    ("policy", "epsilon", "expected"),
    [
        ("uniform", 0.0, {s: [1 / 3] * 3 for s in SEGMENT_CTR}),
        ("source:trending", 0.0, {s: [0, 0, 1] for s in SEGMENT_CTR}),
        ("greedy", 0.0, {"new|web": [0, 0, 1], "returning|mobile": [1, 0, 0]}),
        ("greedy", 0.3, {"new|web": [0.1, 0.1, 0.8], "returning|mobile": [0.8, 0.1, 0.1]}),
    ],
)
def test_named_policies_are_estimated_within_their_intervals(
    event_log: Path, policy: str, epsilon: float, expected: dict[str, list[float]]
) -> None:
    figures = evaluate_log(
        [event_log],
        policy,
        validator=VALIDATOR,
        learning=LEARNING,
        epsilon=epsilon,
        n_bootstrap=300,
        seed=3,
    )
    value = truth(expected)
    for name, est in figures["estimates"].items():
        assert est["low"] <= value <= est["high"], (name, est, value)


def test_target_probs_source_falls_back_to_uniform_when_unavailable(event_log: Path) -> None:
    rounds = read_rounds([event_log], validator=VALIDATOR, learning=LEARNING)
    narrowed = rounds.available.copy()
    narrowed[0] = [True, True, False]
    pi = target_probs(type(rounds)(**{**rounds.__dict__, "available": narrowed}), "source:trending")
    assert pi[0].tolist() == [0.5, 0.5, 0.0] and pi[1].tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="unknown policy 'source:nope'"):
        target_probs(rounds, "source:nope")


def test_cli_prints_a_table_then_one_json_line(event_log: Path) -> None:
    app = typer.Typer()
    ope_command.register(app, typer.Typer())
    app.command("noop")(lambda: None)  # a second command keeps `ope` a named subcommand
    args = ["ope", "--log", str(event_log), "--policy", "source:trending", "--bootstrap", "100"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    *table, last = result.stdout.strip().splitlines()
    assert any("snips" in line for line in table)
    figures = orjson.loads(last)
    assert figures["policy"] == "source:trending" and set(figures["estimates"]) == {
        "ips",
        "snips",
        "dr",
    }
    bad = CliRunner().invoke(app, ["ope", "--log", str(event_log), "--policy", "best"])
    assert bad.exit_code == 1


@pytest.mark.parametrize("module", ["ope", "obd", "impression_log"])
def test_docstring_examples_run(module: str) -> None:
    # streamrec/ is not among pytest's doctest paths, so its examples are run from here.
    import doctest
    import importlib

    found = doctest.testmod(importlib.import_module(f"streamrec.evaluation.{module}"))
    assert found.attempted > 0 and found.failed == 0
