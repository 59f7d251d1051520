"""Forward exponential decay: each event touches one key, reads apply the decay.

A counter stores ``w · exp(λ·(t − L))`` for an event of weight ``w`` at time ``t`` against a
landmark ``L``; reading at ``now`` multiplies by ``exp(−λ·(now − L))``. The stored exponent grows
with ``t − L``, so the landmark is moved forward (and every stored score rescaled by the same
factor) long before float64 would overflow at ``exp(709)``: by any gap, in one step
(:mod:`features.landmarks`). Events far older than the landmark underflow to 0, which is what
they are worth next to the newer ones (below 1e-300 of them).
"""

from __future__ import annotations

import math

LN2 = math.log(2.0)

#: Largest stored exponent before the landmark must move. exp(300) ≈ 1.9e130 keeps ~10^178 of
#: headroom for sums of many events while staying far below float64's ≈1.8e308.
MAX_EXPONENT = 300.0

#: The largest exponent float64 represents (exp(709.78) is its maximum).
FLOAT_EXPONENT = 709.0


class DecayRangeError(ValueError):
    """An event the stored frame cannot represent: its landmark was not moved in time."""


def decay_rate(half_life_s: float) -> float:
    """λ for a half-life in seconds.

    Examples:
        >>> round(decay_rate(3600.0) * 3600.0, 12) == round(LN2, 12)
        True
    """
    if half_life_s <= 0:
        raise ValueError("half-life must be positive")
    return LN2 / half_life_s


def forward_weight(weight: float, t_s: float, landmark_s: float, rate: float) -> float:
    """What one event adds to a forward-decayed counter; an event so far past the landmark
    that float64 cannot hold it raises :class:`DecayRangeError` (the landmark must move)."""
    exponent = rate * (t_s - landmark_s)
    if exponent > FLOAT_EXPONENT:
        raise DecayRangeError(
            f"event at {t_s:.0f} s is {t_s - landmark_s:.3g} s past its decay landmark"
        )
    return weight * math.exp(exponent)


def read_factor(now_s: float, landmark_s: float, rate: float) -> float:
    """Multiply a stored score by this to get its decayed value at ``now_s``.

    Examples:
        >>> rate = decay_rate(60.0)
        >>> stored = forward_weight(8.0, 100.0, 0.0, rate)
        >>> round(stored * read_factor(160.0, 0.0, rate), 9)  # one half-life later
        4.0

    A read long before the landmark (a clock far behind the stream) gets the largest finite
    factor rather than an overflow.
    """
    return math.exp(min(-rate * (now_s - landmark_s), FLOAT_EXPONENT))


def needs_rotation(t_s: float, landmark_s: float, rate: float) -> bool:
    """True once an event at ``t_s`` would push the stored exponent past :data:`MAX_EXPONENT`."""
    return rate * (t_s - landmark_s) > MAX_EXPONENT


def rotation_factor(old_landmark_s: float, new_landmark_s: float, rate: float) -> float:
    """Rescale stored scores by this when the landmark moves, so decayed reads do not change.

    Examples:
        >>> rate = decay_rate(10.0)
        >>> stored = forward_weight(1.0, 50.0, 0.0, rate)
        >>> rotated = stored * rotation_factor(0.0, 40.0, rate)
        >>> before = stored * read_factor(70.0, 0.0, rate)
        >>> abs(before - rotated * read_factor(70.0, 40.0, rate)) < 1e-12
        True
    """
    return math.exp(-rate * (new_landmark_s - old_landmark_s))
