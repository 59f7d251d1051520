"""The benchmarks' latency helpers (used by bench freshness): nearest-rank percentiles, the probe
schedule."""

from __future__ import annotations

import random

import pytest

from streamrec.bench.latency import latency_figures, percentile, schedule

ONE_TO_200 = [float(v) for v in range(1, 201)]


def test_p99_of_200_probes_is_the_198th_smallest_so_two_probes_are_slower() -> None:
    shuffled = ONE_TO_200[:]
    random.Random(3).shuffle(shuffled)
    assert percentile(shuffled, 99) == 198.0
    assert percentile(shuffled, 50) == 100.0


def test_nearest_rank_returns_an_observed_value() -> None:
    values = [10.0, 40.0, 20.0, 30.0]
    assert percentile(values, 50) == 20.0  # rank ceil(2.0) = 2, not the mean 25.0
    assert percentile(values, 51) == 30.0  # rank ceil(2.04) = 3
    assert percentile(values, 100) == 40.0
    assert percentile(values, 0) == 10.0  # rank 0 is clamped to the smallest value
    assert percentile([7.0], 99) == 7.0


def test_rank_is_exact_where_float_arithmetic_would_round_up() -> None:
    values = [float(v) for v in range(1, 1001)]
    # 99.9 / 100 * 1000 is 999.0000000000001 in floats, which would pick the maximum.
    assert percentile(values, 99.9) == 999.0


@pytest.mark.parametrize("q", [-1.0, 100.5])
def test_percentile_outside_0_to_100_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], q)


def test_percentile_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_latency_figures_are_milliseconds_and_none_without_samples() -> None:
    assert latency_figures("new_item_", [0.5, 0.001, 0.0125]) == {
        "new_item_p50_ms": 12.5,
        "new_item_p99_ms": 500.0,
        "new_item_max_ms": 500.0,
    }
    assert latency_figures("", []) == {"p50_ms": None, "p99_ms": None, "max_ms": None}


def test_schedule_spreads_sends_evenly_and_phase_shifts_them_within_a_slot() -> None:
    assert schedule(4, 2.0, 8.0, 0.0) == [2.0, 4.0, 6.0, 8.0]
    assert schedule(4, 2.0, 8.0, 0.5) == [3.0, 5.0, 7.0, 9.0]
    assert schedule(0, 2.0, 8.0, 0.5) == []


def test_probes_never_seen_count_as_slowest_so_p99_is_unknown_not_flattering() -> None:
    seen = [0.001 * v for v in range(1, 199)]  # 198 of 200 probes seen, 1..198 ms
    assert latency_figures("", seen, missing=2)["p99_ms"] == 198.0  # rank 198 is still seen
    three_lost = latency_figures("", seen[:197], missing=3)
    assert three_lost["p99_ms"] is None
    assert three_lost["p50_ms"] == 100.0
    assert three_lost["max_ms"] is None
