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
from features.decay import needs_rotation, rotation_factor
from features.keys import Keys

#: New and rotated landmarks are whole hours: runs over the same events pick the same ones.
LANDMARK_ALIGN_S = 3600.0


def aligned_landmark(t_s: float) -> float:
    """The landmark a new or rotated family gets for event time ``t_s``."""
    return math.floor(t_s / LANDMARK_ALIGN_S) * LANDMARK_ALIGN_S


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
    queue the rescaling of every key of the family.

    Examples:
        >>> from features.decay import decay_rate
        >>> keys, hourly = Keys("t"), decay_rate(3600.0)
        >>> batch_landmark(WriteBatch(), keys, {}, "f", hourly, (7300.0, 7400.0), print)
        7200.0
        >>> factors: list[float] = []
        >>> batch_landmark(
        ...     WriteBatch(), keys, {"f": "0.0"}, "f", hourly, (1.9e6, 2e6), factors.append
        ... )
        1998000.0
        >>> [f"{f:.3g}" for f in factors]
        ['8.48e-168']
    """
    oldest, newest = span_s
    stored = landmarks.get(family)
    batch.guard(keys.landmarks(), family, stored)
    if stored is None:
        landmark = aligned_landmark(oldest)
    else:
        landmark = float(stored)
        if not needs_rotation(newest, landmark, rate):
            return landmark
        moved = aligned_landmark(newest)
        rescale(rotation_factor(landmark, moved, rate))
        landmark = moved
    batch.hset(keys.landmarks(), {family: repr(landmark)})
    return landmark
