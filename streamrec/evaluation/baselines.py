"""Baselines scored in the same prequential run as the funnel, on the same stream.

Both learn from exactly the events the funnel learns from, at the same moments, and are
asked for the same top-K before each event is applied.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict, deque
from collections.abc import Collection


class MostPopular:
    """Most interacted-with items so far.

    Examples:
        >>> pop = MostPopular()
        >>> for item in "abacab":
        ...     pop.learn("u", item)
        >>> pop.top(2, exclude=set())
        ['a', 'b']
        >>> pop.top(2, exclude={"a"})
        ['b', 'c']
    """

    name = "most_popular"

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def learn(self, user: str, item: str) -> None:
        """Count one interaction."""
        self.counts[item] += 1

    def top(self, k: int, exclude: Collection[str]) -> list[str]:
        """The ``k`` most counted items not in ``exclude`` (ties by id)."""
        want = k + len(exclude)
        best = heapq.nsmallest(want, self.counts.items(), key=lambda pair: (-pair[1], pair[0]))
        return [item for item, _ in best if item not in exclude][:k]


class ItemCovisitation:
    """Items that followed the user's last items, counted over every user so far.

    Each new item of a user counts a pair with each of that user's previous ``window``
    items (under the earlier one); recommendations blend the neighbours of the user's last
    ``window`` items, the newest weighing most.

    Examples:
        >>> covis = ItemCovisitation(window=2)
        >>> for user, item in [("u", "a"), ("u", "b"), ("v", "a"), ("v", "c"), ("v", "b")]:
        ...     covis.learn(user, item)
        >>> covis.learn("w", "a")
        >>> covis.top("w", 2, exclude={"a"})
        ['b', 'c']
    """

    name = "item_covisitation"

    def __init__(self, window: int = 3) -> None:
        self.window = window
        self.after: dict[str, Counter[str]] = defaultdict(Counter)
        self.recent: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=window))

    def learn(self, user: str, item: str) -> None:
        """Count the pairs one interaction makes, then remember the item."""
        history = self.recent[user]
        for earlier in history:
            if earlier != item:
                self.after[earlier][item] += 1
        if item in history:
            history.remove(item)
        history.append(item)

    def top(self, user: str, k: int, exclude: Collection[str]) -> list[str]:
        """Up to ``k`` items that followed the user's latest items."""
        scores: dict[str, float] = defaultdict(float)
        history = list(self.recent.get(user, ()))
        for age, item in enumerate(reversed(history)):
            weight = 1.0 / (1 + age)
            for neighbour, count in self.after.get(item, Counter()).most_common(k * 2):
                scores[neighbour] += weight * count
        ranked = sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))
        return [item for item, _ in ranked if item not in exclude][:k]
