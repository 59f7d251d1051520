"""Decayed state over any span of event time: gaps from 0 to 200 years, half-lives from 1 s to
1 year, cut into batches anywhere. No exception, and every read equals the naive decayed sum
(each event's weight times 2^(-age / half-life), summed at read time) within 1e-9 relative.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from features.bandit import FAMILY as BANDIT_FAMILY
from features.bandit import Outcome, SourceBandit
from features.batch import WriteBatch
from features.covisitation import FAMILY as COVIS_FAMILY
from features.covisitation import Covisitation, Visit
from features.decay import decay_rate, read_factor
from features.embeddings import update_many
from features.keys import Keys
from features.settings import FeatureSettings
from features.stores.memory_store import InMemoryStore
from features.trending import Counted, Trending
from tests.reads import posteriors

YEAR_S = 365.25 * 86400.0
KEYS = Keys("h")
#: Events start in 1995 (a replay of a public log), then jump.
START_S = 800_000_000.0

gaps = st.lists(
    st.one_of(
        st.floats(0.0, 200 * YEAR_S),
        st.sampled_from([0.0, 0.001, 1.0, 3600.0, 86400.0, 30 * YEAR_S, 200 * YEAR_S]),
    ),
    min_size=1,
    max_size=10,
)
half_lives = st.one_of(st.floats(1.0, YEAR_S), st.sampled_from([1.0, 3600.0, YEAR_S]))
cuts = st.lists(st.integers(1, 4), min_size=1, max_size=10)


def times_of(steps: Sequence[float]) -> list[float]:
    """Event times in seconds, whole milliseconds, from the gaps."""
    out, t = [], START_S
    for gap in steps:
        t += gap
        out.append(round(t, 3))
    return out


def batches(n: int, sizes: Sequence[int]) -> list[range]:
    """``range(n)`` cut into consecutive batches of the given sizes (cycled)."""
    out, start, k = [], 0, 0
    while start < n:
        size = sizes[k % len(sizes)]
        out.append(range(start, min(n, start + size)))
        start, k = start + size, k + 1
    return out


def naive(times: Sequence[float], now_s: float, half_life_s: float, weight: float = 1.0) -> float:
    return math.fsum(weight * 2.0 ** (-(now_s - t) / half_life_s) for t in times)


def close(got: float, want: float) -> bool:
    # Terms below float64's smallest normal are 0 on both sides of the comparison.
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-300)


def commit_each(
    store: InMemoryStore,
    parts: list[range],
    write: Callable[[WriteBatch, dict[str, str], range], None],
) -> None:
    for part in parts:
        batch = WriteBatch()
        write(batch, store.hgetall(KEYS.landmarks()), part)
        store.commit(batch)


@settings(max_examples=80, deadline=None)
@given(gaps, half_lives, cuts, st.floats(0.0, 10 * YEAR_S))
def test_trending_reads_the_naive_decayed_sum(
    steps: list[float], half_life_s: float, sizes: list[int], later_s: float
) -> None:
    times = times_of(steps)
    weight = FeatureSettings().event_weights["click"]
    trending = Trending(KEYS, [half_life_s], {"click": weight})
    store = InMemoryStore()

    def write(batch: WriteBatch, landmarks: dict[str, str], part: range) -> None:
        events = [Counted("a", "click", int(round(times[i] * 1000)), "news") for i in part]
        trending.add(batch, landmarks, lambda: ["news"], events)

    commit_each(store, batches(len(times), sizes), write)
    now_s = times[-1] + later_s
    landmark = float(store.hgetall(KEYS.landmarks())[Trending.family(half_life_s)])
    factor = read_factor(now_s, landmark, decay_rate(half_life_s))
    want = naive(times, now_s, half_life_s, weight)
    for scope in ("global", "cat:news"):
        stored = store.dump(KEYS.trending(half_life_s, scope))[KEYS.trending(half_life_s, scope)]
        assert close(stored["a"] * factor, want), (scope, stored, want)


@settings(max_examples=80, deadline=None)
@given(gaps, half_lives, cuts, st.floats(0.0, 10 * YEAR_S))
def test_covisitation_reads_the_naive_decayed_sum(
    steps: list[float], half_life_s: float, sizes: list[int], later_s: float
) -> None:
    # Session k: user k views a, then b one second later: one a -> b pair at the later view.
    starts = times_of(steps)
    covis = Covisitation.from_settings(KEYS, FeatureSettings(covisitation_half_life_s=half_life_s))
    store = InMemoryStore()

    def write(batch: WriteBatch, landmarks: dict[str, str], part: range) -> None:
        visits = {
            f"u{k}": [
                Visit("a", int(round(starts[k] * 1000)), True),
                Visit("b", int(round(starts[k] * 1000)) + 1000, True),
            ]
            for k in part
        }
        covis.add(batch, landmarks, {}, visits)

    commit_each(store, batches(len(starts), sizes), write)
    now_s = starts[-1] + 1.0 + later_s
    landmark = float(store.hgetall(KEYS.landmarks())[COVIS_FAMILY])
    factor = read_factor(now_s, landmark, decay_rate(half_life_s))
    row = store.dump(KEYS.covisitation("a"))[KEYS.covisitation("a")]
    want = naive([t + 1.0 for t in starts], now_s, half_life_s)
    assert close(row["b"] * factor, want), (row, want)


@settings(max_examples=80, deadline=None)
@given(gaps, half_lives, cuts, st.floats(0.0, 10 * YEAR_S))
def test_the_bandit_reads_the_naive_decayed_sum(
    steps: list[float], half_life_s: float, sizes: list[int], later_s: float
) -> None:
    times = times_of(steps)
    bandit = SourceBandit(KEYS, half_life_s=half_life_s, prior_alpha=1.0, prior_beta=1.0)
    store = InMemoryStore()
    rewards = [float(i % 2) for i in range(len(times))]

    def write(batch: WriteBatch, landmarks: dict[str, str], part: range) -> None:
        outcomes = [Outcome("s", "trending", rewards[i], int(round(times[i] * 1000))) for i in part]
        bandit.add(batch, landmarks, lambda: ["s"], outcomes)

    commit_each(store, batches(len(times), sizes), write)
    now_s = times[-1] + later_s
    assert store.hgetall(KEYS.landmarks())[BANDIT_FAMILY]
    post = posteriors(bandit, store, "s", now_s)["trending"]
    assert close(post.shown, naive(times, now_s, half_life_s))
    clicked = [t for t, r in zip(times, rewards, strict=True) if r]
    assert close(post.rewards, naive(clicked, now_s, half_life_s))


@settings(max_examples=80, deadline=None)
@given(gaps, half_lives, cuts)
def test_session_and_user_embeddings_hold_the_naive_decayed_mass(
    steps: list[float], half_life_s: float, sizes: list[int]
) -> None:
    times = times_of(steps)
    ts_ms = [int(round(t * 1000)) for t in times]
    vectors = np.eye(4, dtype=np.float32)[[i % 4 for i in range(len(times))]]
    for gap_s in (None, 1800.0):  # a user's state, then a session's (which restarts on a gap)
        state = None
        for part in batches(len(times), sizes):
            idx = list(part)
            state = update_many(
                state,
                vectors[idx],
                np.ones(len(idx)),
                [ts_ms[i] for i in idx],
                half_life_s=half_life_s,
                session_gap_s=gap_s,
            )
        assert state is not None
        kept = list(range(len(times)))
        if gap_s is not None:  # the last session: back from the end while gaps stay short
            first = len(times) - 1
            while first > 0 and ts_ms[first] - ts_ms[first - 1] <= gap_s * 1000:
                first -= 1
            kept = kept[first:]
        assert state.last_ts_ms == ts_ms[-1]
        # Ages from whole milliseconds, as the state keeps them.
        decays = {i: 2.0 ** (-(ts_ms[-1] - ts_ms[i]) / 1000.0 / half_life_s) for i in kept}
        assert close(state.mass, math.fsum(decays.values()))
        want = np.zeros(4)
        for i, decay in decays.items():
            want += vectors[i] * decay
        assert np.allclose(state.total, want, rtol=1e-5, atol=1e-30)
