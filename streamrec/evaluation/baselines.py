"""Baselines scored in the same prequential run as the funnel, on the same stream.

Both learn from exactly the events the funnel learns from, at the same moments, and are
asked for the same top-K before each event is applied.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict, deque
from collections.abc import Collection


class MostPopular:
    """Most interacted-with items so far.

    Items are kept in buckets by count, each bucket sorted by id, so ``learn`` moves one
    item up one bucket and ``top`` reads from the highest bucket down: O(k + |exclude|)
    per call, not a sort of the catalog.

    Examples:
        >>> pop = MostPopular()
        >>> for item in "abacab":
        ...     pop.learn("u", item)
        >>> pop.top("v", 2, exclude=set())
        ['a', 'b']
        >>> pop.top("v", 2, exclude={"a"})
        ['b', 'c']
    """

    name = "most_popular"

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._buckets: dict[int, list[str]] = {}  # count -> its items, sorted by id
        self._levels: list[int] = []  # the counts that have a bucket, ascending

    def learn(self, user: str, item: str) -> None:
        """Count one interaction."""
        count = self.counts[item]
        if count:
            bucket = self._buckets[count]
            del bucket[bisect.bisect_left(bucket, item)]
            if not bucket:
                del self._buckets[count]
                del self._levels[bisect.bisect_left(self._levels, count)]
        count += 1
        self.counts[item] = count
        if count in self._buckets:
            bisect.insort(self._buckets[count], item)
        else:
            self._buckets[count] = [item]
            bisect.insort(self._levels, count)

    def top(self, user: str, k: int, exclude: Collection[str]) -> list[str]:
        """The ``k`` most counted items not in ``exclude`` (ties by id), the same for
        every user."""
        best: list[str] = []
        if k <= 0:
            return best
        for level in reversed(self._levels):
            for item in self._buckets[level]:
                if item not in exclude:
                    best.append(item)
                    if len(best) == k:
                        return best
        return best


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
