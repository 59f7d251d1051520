"""Where forward-decayed counters keep their landmark, and how a batch moves it.

Every family of counters (trending per half-life, the bandit, co-visitation) stores its
landmark in one hash. A batch reads it, guards it (a concurrent move makes the commit
conflict instead of mixing frames), and when its newest event would push the stored exponent
too far, moves it forward and rescales the family's keys in the same commit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from features.batch import WriteBatch
from features.decay import needs_rotation, read_factor, rotation_factor
from features.keys import Keys

#: (id, score) pairs, best first, as sorted sets are read.
Ranked = list[tuple[str, float]]

#: New and rotated landmarks are whole hours (for short half-lives, shorter steps): runs over
#: the same events pick the same ones.
LANDMARK_ALIGN_S = 3600.0
#: Most decay exponent one alignment step may add (a 1 s half-life must not step by an hour).
STEP_EXPONENT = 64.0


def landmark_step(rate: float) -> float:
    """Seconds between the landmarks a family with decay rate ``rate`` may take.

    Examples:
        >>> from features.decay import decay_rate
        >>> landmark_step(decay_rate(86400.0)), round(landmark_step(decay_rate(1.0)), 1)
        (3600.0, 92.3)
    """
    return min(LANDMARK_ALIGN_S, STEP_EXPONENT / rate)


def aligned_landmark(t_s: float, rate: float) -> float:
    """The landmark a new or rotated family gets for event time ``t_s``."""
    step = landmark_step(rate)
    return math.floor(t_s / step) * step


def batch_landmark(
    batch: WriteBatch,
    keys: Keys,
    landmarks: Mapping[str, str],
    family: str,
    rate: float,
    span_s: tuple[float, float],
    rescale: Callable[[float], None],
) -> float:
    """The landmark of ``family`` for a batch whose events span ``span_s`` (oldest, newest):
    guarded as read, set on first use, and moved when needed, calling ``rescale(factor)`` to
    queue the rescaling of every key of the family. The landmark follows the newest event, so
    a gap of any length (inside the batch or since the last one) is one step: older events
    get negative exponents, never an overflow.

    Examples:
        >>> from features.decay import decay_rate
        >>> keys, hourly = Keys("t"), decay_rate(3600.0)
        >>> batch_landmark(WriteBatch(), keys, {}, "f", hourly, (7300.0, 7400.0), print)
        7200.0
        >>> batch_landmark(WriteBatch(), keys, {}, "f", hourly, (0.0, 6.3e11), print)  # 20,000 y
        630000000000.0
        >>> factors: list[float] = []
        >>> batch_landmark(
        ...     WriteBatch(), keys, {"f": "0.0"}, "f", hourly, (1.9e6, 2e6), factors.append
        ... )
        1998000.0
        >>> [f"{f:.3g}" for f in factors]
        ['8.48e-168']
    """
    _oldest, newest = span_s
    stored = landmarks.get(family)
    batch.guard(keys.landmarks(), family, stored)
    if stored is None:
        landmark = aligned_landmark(newest, rate)
    else:
        landmark = float(stored)
        if not needs_rotation(newest, landmark, rate):
            return landmark
        moved = aligned_landmark(newest, rate)
        rescale(rotation_factor(landmark, moved, rate))
        landmark = moved
    batch.hset(keys.landmarks(), {family: repr(landmark)})
    return landmark


def landmark_factor(
    landmarks: Mapping[str, str], family: str, rate: float, now_s: float
) -> float | None:
    """What turns ``family``'s stored scores into their values decayed to ``now_s``, given the
    landmarks hash as read; None when the family was never written.

    Examples:
        >>> from features.decay import decay_rate
        >>> landmark_factor({"f": "0.0"}, "f", decay_rate(60.0), 120.0)
        0.25
        >>> landmark_factor({}, "f", decay_rate(60.0), 120.0) is None
        True
    """
    stored = landmarks.get(family)
    return None if stored is None else read_factor(now_s, float(stored), rate)


def decayed(ranked: Ranked, factor: float | None) -> Ranked:
    """``ranked``'s stored scores times ``factor``; nothing when the family has no landmark."""
    if factor is None:
        return []
    return [(item, score * factor) for item, score in ranked]
