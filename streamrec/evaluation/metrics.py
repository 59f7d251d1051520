"""Ranking metrics of a prequential run, accumulated one target at a time.

Each evaluated event has one relevant item (the one the user interacted with next), so with
its 1-based rank ``r`` in a top-K list: HR@K = [r ≤ K], MRR@K = 1/r if r ≤ K, and
NDCG@K = 1/log2(r + 1) if r ≤ K (the ideal DCG of one relevant item is 1).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class RankAccumulator:
    """HR, MRR and NDCG at several cut-offs over a stream of ranks (None = not in the list).

    Examples:
        >>> acc = RankAccumulator((10, 20))
        >>> for rank in (1, 4, None, 15):
        ...     acc.add(rank)
        >>> acc.summary()["hr@10"], acc.summary()["hr@20"], round(acc.summary()["mrr@10"], 4)
        (0.5, 0.75, 0.3125)
    """

    cutoffs: tuple[int, ...] = (10, 20)
    count: int = 0
    hits: Counter[int] = field(default_factory=Counter)
    reciprocal: dict[int, float] = field(default_factory=dict)
    gain: dict[int, float] = field(default_factory=dict)

    def add(self, rank: int | None) -> None:
        """Record one target's rank (1-based), or None when it was not recommended."""
        self.count += 1
        if rank is None:
            return
        for k in self.cutoffs:
            if rank <= k:
                self.hits[k] += 1
                self.reciprocal[k] = self.reciprocal.get(k, 0.0) + 1.0 / rank
                self.gain[k] = self.gain.get(k, 0.0) + 1.0 / math.log2(rank + 1)

    def summary(self) -> dict[str, float]:
        """``hr@K``, ``mrr@K``, ``ndcg@K`` for every cut-off (0 when nothing was counted)."""
        n = max(self.count, 1)
        out: dict[str, float] = {}
        for k in self.cutoffs:
            out[f"hr@{k}"] = self.hits[k] / n
            out[f"mrr@{k}"] = self.reciprocal.get(k, 0.0) / n
            out[f"ndcg@{k}"] = self.gain.get(k, 0.0) / n
        return out


def rank_of(item: str, ranked: Sequence[str]) -> int | None:
    """1-based position of ``item`` in ``ranked``, or None."""
    for position, candidate in enumerate(ranked, start=1):
        if candidate == item:
            return position
    return None


@dataclass
class ExposureAccumulator:
    """Catalog coverage and novelty of what was recommended.

    Novelty of a recommended item is its self-information ``−log2(p)``, with ``p`` its share
    of the interactions seen so far (add-one smoothed), averaged over recommended slots.
    """

    recommended: set[str] = field(default_factory=set)
    novelty_sum: float = 0.0
    slots: int = 0

    def add(self, items: Sequence[str], popularity: Counter[str], total: int) -> None:
        """Record one recommended list against the interaction counts so far."""
        self.recommended.update(items)
        denominator = total + max(len(popularity), 1)
        for item in items:
            self.novelty_sum += -math.log2((popularity[item] + 1) / denominator)
        self.slots += len(items)

    def summary(self, catalog_size: int) -> dict[str, float]:
        """``coverage`` (share of the catalog ever recommended) and mean ``novelty`` (bits)."""
        return {
            "coverage": len(self.recommended) / catalog_size if catalog_size else 0.0,
            "novelty": self.novelty_sum / self.slots if self.slots else 0.0,
        }
