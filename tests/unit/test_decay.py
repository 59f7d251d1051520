"""Decay maths against hand-computed values."""

from __future__ import annotations

import math

import pytest

from features.decay import (
    MAX_EXPONENT,
    decay_rate,
    forward_weight,
    needs_rotation,
    read_factor,
    rotation_factor,
)


def test_one_half_life_halves_a_count() -> None:
    rate = decay_rate(3600.0)
    stored = forward_weight(10.0, t_s=1_000.0, landmark_s=0.0, rate=rate)
    assert stored * read_factor(1_000.0, 0.0, rate) == pytest.approx(10.0)
    assert stored * read_factor(4_600.0, 0.0, rate) == pytest.approx(5.0)
    assert stored * read_factor(8_200.0, 0.0, rate) == pytest.approx(2.5)


def test_two_events_decay_independently() -> None:
    rate = decay_rate(60.0)
    stored = forward_weight(1.0, 0.0, 0.0, rate) + forward_weight(1.0, 60.0, 0.0, rate)
    # At t=60 the first event is worth 0.5 and the second 1.0.
    assert stored * read_factor(60.0, 0.0, rate) == pytest.approx(1.5)


def test_rotation_keeps_decayed_scores() -> None:
    rate = decay_rate(30.0)
    stored = forward_weight(3.0, 500.0, 0.0, rate)
    rotated = stored * rotation_factor(0.0, 480.0, rate)
    for now in (500.0, 600.0, 1_000.0):
        before = stored * read_factor(now, 0.0, rate)
        after = rotated * read_factor(now, 480.0, rate)
        assert after == pytest.approx(before, rel=1e-12)


def test_rotation_is_needed_before_overflow() -> None:
    rate = decay_rate(3600.0)
    limit_s = MAX_EXPONENT / rate
    assert not needs_rotation(limit_s - 1.0, 0.0, rate)
    assert needs_rotation(limit_s + 1.0, 0.0, rate)
    # At the rotation threshold the stored weight is still far from float64 overflow.
    assert math.isfinite(forward_weight(1e6, limit_s, 0.0, rate) * 1e9)


def test_half_life_must_be_positive() -> None:
    with pytest.raises(ValueError):
        decay_rate(0.0)
