"""The feed service: for now, decayed-popular items the user has not seen and may be shown.

Later issues grow this into the four-stage funnel; the HTTP layer only calls :meth:`feed`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from features.errors import StoreUnavailableError
from serving.resources import Resources

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FeedItem:
    """One slot of a served feed."""

    item_id: str
    score: float
    source: str


@dataclass(frozen=True, slots=True)
class Feed:
    """A served feed; ``degraded`` when it came from the last good data, not live state."""

    user_id: str
    items: list[FeedItem]
    degraded: bool = False


class FeedService:
    """Builds feeds from live state, falling back to the last good popular list."""

    #: Candidates fetched beyond k, so that seen and unavailable items can be dropped.
    OVERFETCH = 50

    def __init__(self, resources: Resources) -> None:
        self.r = resources
        self.half_life_s = resources.features.half_lives_s[0]
        self._last_good: list[tuple[str, float]] = []
        self._lock = threading.Lock()
        self._degraded = False

    def feed(self, user_id: str, k: int, now_s: float) -> Feed:
        """The top ``k`` decayed-popular items ``user_id`` has not seen."""
        try:
            items = self._live(user_id, k, now_s)
        except StoreUnavailableError as exc:
            with self._lock:
                if not self._degraded:
                    log.warning("serving degraded feeds from the last good data: %s", exc)
                self._degraded = True
                fallback = self._last_good[:k]
            return Feed(user_id, [FeedItem(i, s, "popular") for i, s in fallback], degraded=True)
        if self._degraded:
            with self._lock:
                self._degraded = False
            log.info("live state reachable again; feeds are live")
        return Feed(user_id, items)

    def _live(self, user_id: str, k: int, now_s: float) -> list[FeedItem]:
        fetch = k + self.OVERFETCH
        while True:
            ranked = self.r.trending.top(self.r.store, self.half_life_s, fetch, now_s)
            if fetch == k + self.OVERFETCH:
                with self._lock:
                    self._last_good = ranked
            ids = [item for item, _ in ranked]
            seen = self.r.seen.mask(self.r.store, user_id, ids)
            available = self.r.catalog.available_mask(self.r.store, ids)
            kept = [
                FeedItem(item, score, "popular")
                for (item, score), was_seen, ok in zip(ranked, seen, available, strict=True)
                if ok and not was_seen
            ]
            # Stop once there are enough, or the store has no more candidates to give.
            if len(kept) >= k or len(ranked) < fetch:
                return kept[:k]
            fetch *= 4
