"""The source bandit through the write batch and the in-memory store."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from features.bandit import (
    FAMILY,
    Outcome,
    Posterior,
    SourceBandit,
    choose_source,
    source_probabilities,
)
from features.batch import WriteBatch
from features.decay import MAX_EXPONENT, decay_rate
from features.keys import Keys
from features.stores.memory_store import InMemoryStore
from tests.reads import posteriors

HOUR = 3600.0
SEG = "new|mobile"
T0_MS = 100 * 3_600_000  # on a landmark boundary, so a read at T0 needs no decay


def make(half_life_s: float = HOUR, namespace: str = "b") -> SourceBandit:
    return SourceBandit(Keys(namespace), half_life_s=half_life_s, prior_alpha=1.0, prior_beta=1.0)


def apply(bandit: SourceBandit, store: InMemoryStore, outcomes: list[Outcome]) -> None:
    batch = WriteBatch()
    landmarks = store.hgetall(bandit.keys.landmarks())
    bandit.add(batch, landmarks, lambda: bandit.segments(store), outcomes)
    store.commit(batch)


def slots(source: str, n: int, click_every: int, ts_ms: int, segment: str = SEG) -> list[Outcome]:
    """``n`` slots of ``source``, every ``click_every``-th one clicked (0: never)."""
    return [
        Outcome(segment, source, 1.0 if click_every and i % click_every == 0 else 0.0, ts_ms)
        for i in range(n)
    ]


def landmark(store: InMemoryStore, bandit: SourceBandit) -> float:
    return float(store.hgetall(bandit.keys.landmarks())[FAMILY])


def probabilities(
    bandit: SourceBandit, store: InMemoryStore, now_s: float, sources: list[str], seed: int = 1
) -> dict[str, float]:
    return source_probabilities(
        posteriors(bandit, store, SEG, now_s),
        sources,
        np.random.default_rng(seed),
        draws=4000,
        floor=0.05,
        prior=bandit.prior,
    )


def test_the_better_source_gets_the_higher_mean_and_probability() -> None:
    bandit, store = make(), InMemoryStore()
    apply(bandit, store, slots("good", 200, 5, T0_MS) + slots("poor", 200, 50, T0_MS))
    posts = posteriors(bandit, store, SEG, T0_MS / 1000)
    assert posts["good"] == Posterior(alpha=41.0, beta=161.0, shown=200.0, rewards=40.0)
    assert posts["poor"] == Posterior(alpha=5.0, beta=197.0, shown=200.0, rewards=4.0)
    assert posts["good"].mean > posts["poor"].mean
    probs = probabilities(bandit, store, T0_MS / 1000, ["poor", "good"])
    assert probs["good"] > 0.9 > probs["poor"]
    assert bandit.segments(store) == [SEG]


def test_outcomes_one_half_life_older_weigh_half() -> None:
    bandit, store = make(), InMemoryStore()
    older = slots("a", 4, 2, T0_MS)  # 4 slots, 2 clicks
    newer = slots("a", 4, 0, T0_MS + int(HOUR * 1000))  # 4 slots, no click
    apply(bandit, store, older + newer)
    one_later = posteriors(bandit, store, SEG, T0_MS / 1000 + HOUR)["a"]
    assert one_later.shown == pytest.approx(4 * 0.5 + 4)
    assert one_later.rewards == pytest.approx(2 * 0.5)
    assert one_later.alpha == pytest.approx(1.0 + 1.0)
    assert one_later.beta == pytest.approx(1.0 + 6.0 - 1.0)
    two_later = posteriors(bandit, store, SEG, T0_MS / 1000 + 2 * HOUR)["a"]
    assert two_later.shown == pytest.approx(4 * 0.25 + 4 * 0.5)


def test_a_landmark_rotation_leaves_every_segment_posterior_unchanged() -> None:
    bandit, store = make(half_life_s=60.0), InMemoryStore()
    t0_s = 1_000_000.0
    apply(bandit, store, slots("a", 10, 3, int(t0_s * 1000)) + slots("b", 5, 0, int(t0_s * 1000)))
    read_at = t0_s + 60.0
    before = posteriors(bandit, store, SEG, read_at)
    first = landmark(store, bandit)
    t1_s = float(int(first + 1.5 * MAX_EXPONENT / decay_rate(60.0)))
    # Only another segment gets new outcomes: SEG must be rescaled as a known segment.
    apply(bandit, store, slots("a", 2, 2, int(t1_s * 1000), segment="old|web"))
    assert landmark(store, bandit) > first
    after = posteriors(bandit, store, SEG, read_at)
    assert after.keys() == before.keys()
    for source, post in before.items():
        for field in ("alpha", "beta", "shown", "rewards"):
            expected = getattr(post, field)
            assert getattr(after[source], field) == pytest.approx(expected, rel=1e-9)
    assert before["a"].shown == pytest.approx(5.0)  # 10 slots, one half-life old
    other = posteriors(bandit, store, "old|web", t1_s)["a"]
    assert (other.shown, other.rewards) == pytest.approx((2.0, 1.0))


def test_increments_commute_across_batches() -> None:
    first = slots("a", 6, 2, T0_MS) + slots("b", 3, 1, T0_MS + 60_000, segment="old|web")
    second = slots("a", 4, 0, T0_MS + 7_200_000) + slots("c", 5, 5, T0_MS + 9_000_000)
    one, forward, backward = InMemoryStore(), InMemoryStore(), InMemoryStore()
    bandit = make()
    apply(bandit, one, first + second)
    apply(bandit, forward, first)
    apply(bandit, forward, second)
    apply(bandit, backward, second)
    apply(bandit, backward, first)

    # Each run's landmark follows the newest outcome of its first batch, so the stored
    # numbers differ between runs, but every decayed read is the same.
    assert landmark(forward, bandit) < landmark(one, bandit) == landmark(backward, bandit)
    now_s = T0_MS / 1000 + 3 * HOUR
    for store in (forward, backward):
        assert sorted(bandit.segments(store)) == sorted(bandit.segments(one))
        for segment in (SEG, "old|web"):
            got, want = (
                posteriors(bandit, store, segment, now_s),
                posteriors(bandit, one, segment, now_s),
            )
            assert got.keys() == want.keys()
            for source, post in want.items():
                assert (got[source].shown, got[source].rewards) == pytest.approx(
                    (post.shown, post.rewards), rel=1e-12
                )


def test_a_source_name_with_a_separator_is_rejected_before_anything_is_queued() -> None:
    bandit, batch = make(), WriteBatch()
    with pytest.raises(ValueError, match="must not contain"):
        bandit.add(batch, {}, list, [Outcome(SEG, "ok", 1.0, 0), Outcome(SEG, "a|r", 1.0, 0)])
    assert not batch


def test_probabilities_are_a_distribution_with_a_floor_and_are_seeded() -> None:
    posts = {
        "strong": Posterior(alpha=90.0, beta=10.0, shown=98.0, rewards=89.0),
        "hopeless": Posterior(alpha=1.0, beta=500.0, shown=500.0, rewards=0.0),
    }
    prior = Posterior(1.0, 1.0, 0.0, 0.0)
    sources = ["hopeless", "unknown", "strong"]

    def run(seed: int, given: dict[str, Posterior]) -> dict[str, float]:
        rng = np.random.default_rng(seed)
        return source_probabilities(given, sources, rng, draws=5000, floor=0.06, prior=prior)

    probs = run(3, posts)
    assert list(probs) == sources
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-12)
    assert all(p > 0 for p in probs.values())
    assert probs["hopeless"] == pytest.approx(0.06 / 3)  # never wins: the floor alone
    assert probs["strong"] > probs["unknown"] > probs["hopeless"]
    assert run(3, posts) == probs
    assert run(4, posts) != probs
    assert run(3, {**posts, "unknown": prior}) == probs  # a missing source draws from the prior
    assert (
        source_probabilities({}, [], np.random.default_rng(0), draws=10, floor=0.1, prior=prior)
        == {}
    )


def test_choose_source_logs_the_probability_it_sampled_with() -> None:
    probs = {"a": 0.6, "b": 0.3, "c": 0.1}
    rng = np.random.default_rng(11)
    n = 20_000
    counts: Counter[str] = Counter()
    for _ in range(n):
        source, propensity = choose_source(probs, rng)
        assert propensity == probs[source]
        counts[source] += 1
    for source, p in probs.items():
        assert counts[source] / n == pytest.approx(p, abs=0.03)
    with pytest.raises(ValueError):
        choose_source({}, rng)


@pytest.mark.parametrize(("half_life_s", "b_wins"), [(HOUR, True), (1000 * HOUR, False)])
def test_discounting_follows_drift(half_life_s: float, b_wins: bool) -> None:
    bandit, store = make(half_life_s), InMemoryStore()
    # Phase 1: A is clearly better, with a lot of traffic.
    apply(bandit, store, slots("A", 1000, 4, T0_MS) + slots("B", 1000, 40, T0_MS))
    # Phase 2, six hours later: B is now better, with less traffic.
    later = T0_MS + int(6 * HOUR * 1000)
    apply(bandit, store, slots("A", 200, 40, later) + slots("B", 200, 4, later))
    probs = probabilities(bandit, store, later / 1000, ["A", "B"])
    # Undiscounted (the long half-life), phase 1's volume still decides: the control case.
    assert (probs["B"] > probs["A"]) is b_wins
