"""Every read the funnel makes of live state, in a handful of batched calls per request.

Global lists (trending, popular, fresh, bandit posteriors) are the same for every user and
change by the second, so they are reused for ``live_lists_ttl_s``; the last good copy also
answers degraded feeds when the store is down. Item metadata comes from the serving
replica's catalog (kept from the items topic), so filters cost no round trip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from features.ann import AnnIndex
from features.bandit import Posterior, SourceBandit
from features.catalog import Catalog, ItemMeta, deletion_time
from features.covisitation import Covisitation
from features.embeddings import EmbeddingState, Vector, vector
from features.errors import StoreUnavailableError
from features.keys import GLOBAL, Keys
from features.landmarks import Ranked
from features.ranker import RankerStore, RankerWeights
from features.seen import SeenSet
from features.settings import FeatureSettings, LearningSettings
from features.store import Store
from features.trending import RISING_CANDIDATES, Trending

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class UserState:
    """What the funnel knows about one user at request time."""

    session: Vector | None
    long_term: Vector | None
    recent: list[tuple[str, float]]  # (item, event time ms), newest first
    negative: frozenset[str] = frozenset()  # of the recent items, those skipped or dismissed

    @property
    def is_new(self) -> bool:
        """No history at all: the cold-start segment."""
        return not self.recent and self.long_term is None


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """One item as the catalog route shows it: its meta and, for a tombstone, when it went."""

    meta: ItemMeta | None
    deleted_at_ms: int | None


@dataclass(frozen=True, slots=True)
class Popularity:
    """One item's decayed short and long trending counts and its all-time count."""

    short: float
    long: float
    all_time: float


@dataclass(frozen=True, slots=True)
class CandidateState:
    """What the filters and features need per candidate, read together."""

    seen: set[str]
    negative: set[str]
    counts: dict[str, tuple[float, float]]  # item -> (short, long) decayed trending counts


class _Timed:
    """A value computed at most once per ``ttl_s``, keeping the last good one on failure."""

    def __init__(self, ttl_s: float, clock: Callable[[], float]) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._values: dict[object, tuple[float, object]] = {}
        self._lock = threading.Lock()

    def get(self, key: object, compute: Callable[[], T], *, stale_ok: bool) -> T:
        now = self.clock()
        with self._lock:
            hit = self._values.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]  # type: ignore[return-value]
        try:
            value = compute()
        except StoreUnavailableError:
            if stale_ok and hit is not None:
                return hit[1]  # type: ignore[return-value]
            raise
        with self._lock:
            self._values[key] = (now, value)
        return value

    def last(self, key: object) -> object | None:
        with self._lock:
            hit = self._values.get(key)
        return None if hit is None else hit[1]


class LiveReader:
    """Reads of the live state for one serving process."""

    def __init__(
        self,
        store: Store,
        keys: Keys,
        features: FeatureSettings,
        learning: LearningSettings,
        *,
        index: Callable[[], AnnIndex | None],
        catalog_view: Callable[[], dict[str, ItemMeta] | None],
        lists_ttl_s: float = 1.0,
        model_reload_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.keys, self.features = store, keys, features
        self.trending = Trending(keys, features.half_lives_s, features.event_weights)
        self.covisitation = Covisitation.from_settings(keys, features)
        self.catalog = Catalog(keys)
        self.bandit = SourceBandit(
            keys,
            half_life_s=learning.bandit_half_life_s,
            prior_alpha=learning.bandit_prior_alpha,
            prior_beta=learning.bandit_prior_beta,
        )
        self.rankers = RankerStore(keys)
        self._index = index
        self._catalog_view = catalog_view
        # A replay passes its event-time clock, so reuse follows the stream as it would live.
        self._lists = _Timed(lists_ttl_s, clock)
        self._model = _Timed(model_reload_s, clock)
        self.short_half_life = features.half_lives_s[0]
        self.long_half_life = features.half_lives_s[-1]
        # The last global trending list read, per length: the dashboard's short lists must
        # not cut short a degraded feed.
        self._last_good: dict[int, Ranked] = {}

    @property
    def index(self) -> AnnIndex | None:
        """The process's ANN replica, if it has one."""
        return self._index()

    # --- per user -----------------------------------------------------------------------

    def user_state(self, user_id: str, recent_n: int, now_s: float) -> UserState:
        """Session and long-term vectors and the latest items: one round trip."""
        dim = self.features.embedding_dim
        (raw_session, raw_user), (recent, negatives) = self.store.values_and_tops(
            [self.keys.session_embedding(user_id), self.keys.user_embedding(user_id)],
            [self.keys.seen(user_id), self.keys.negatives(user_id)],
            recent_n,
        )
        session = _state(raw_session, dim)
        if session is not None and now_s * 1000 - session.last_ts_ms > (
            self.features.session_gap_s * 1000
        ):
            session = None  # the session is over; the next event starts a new one
        negative = SeenSet.recent_negatives(recent, negatives)
        return UserState(vector(session), vector(_state(raw_user, dim)), recent, negative)

    def candidate_state(self, user_id: str, items: Sequence[str], now_s: float) -> CandidateState:
        """Per item: seen by the user, skipped or dismissed by them, and its decayed short and
        long trending counts. One round trip."""
        seen, negative, short, long_ = self.store.zscores_many(
            [
                self.keys.seen(user_id),
                self.keys.negatives(user_id),
                self.keys.trending(self.short_half_life),
                self.keys.trending(self.long_half_life),
            ],
            items,
        )
        return CandidateState(
            seen=SeenSet.members(items, seen),
            negative=SeenSet.members(items, negative),
            counts=self._counts(items, short, long_, now_s),
        )

    def covisited(self, items: Sequence[str], k: int, now_s: float) -> list[Ranked]:
        """Each item's ``k`` strongest co-visited neighbours (decayed scores)."""
        if not items:
            return []
        rows = self.store.top_many([self.keys.covisitation(i) for i in items], k)
        return self.covisitation.decayed(rows, self.landmarks(), now_s)

    # --- global, reused for a second ------------------------------------------------------

    def landmarks(self) -> dict[str, str]:
        """The decay landmarks hash."""
        return self._lists.get(
            "landmarks", lambda: self.store.hgetall(self.keys.landmarks()), stale_ok=True
        )

    def _framed(self, name: object, read: Callable[[], T]) -> tuple[T, dict[str, str]]:
        """``read()`` and the landmarks hash read right after it, reused together: stored
        scores are only meaningful against the landmarks they were written under, and a
        landmark may move between two reads."""
        return self._lists.get(
            name, lambda: (read(), self.store.hgetall(self.keys.landmarks())), stale_ok=True
        )

    def trending_list(self, half_life_s: float, scope: str, k: int, now_s: float) -> Ranked:
        """Top ``k`` of one trending counter, decayed to ``now_s``."""
        stored, landmarks = self._framed(
            ("trend", half_life_s, scope, k),
            lambda: self.store.top(self.keys.trending(half_life_s, scope), k),
        )
        ranked = self.trending.decayed(stored, landmarks, half_life_s, now_s)
        if scope == GLOBAL and ranked:
            self._last_good[k] = ranked
        return ranked

    def rising(self, scope: str, k: int, now_s: float) -> Ranked:
        """The ``k`` items of ``scope`` whose short-term rate most outruns their long-term one."""
        short = self.trending_list(self.short_half_life, scope, RISING_CANDIDATES, now_s)
        if not short:
            return []
        long_key = self.keys.trending(self.long_half_life, scope)
        long_stored = self.store.zscores(long_key, [i for i, _ in short])
        return self.trending.rising(short, long_stored, self.landmarks(), now_s, k)

    def categories(self, n: int) -> list[str]:
        """The ``n`` categories counted most recently."""
        return [
            c
            for c, _ in self._lists.get(
                ("categories", n), lambda: self.store.top(self.keys.categories(), n), stale_ok=True
            )
        ]

    def popular_list(self, k: int) -> Ranked:
        """Top ``k`` by all-time weighted interactions."""
        return self._lists.get(
            ("popular", k), lambda: self.trending.all_time(self.store, k), stale_ok=True
        )

    def fresh_list(self, k: int) -> Ranked:
        """The ``k`` newest available items with their created_at (ms)."""
        return self._lists.get(
            ("fresh", k), lambda: self.store.top(self.keys.items_by_time(), k), stale_ok=True
        )

    def posteriors(self, segment: str, now_s: float) -> dict[str, Posterior]:
        """The bandit's posteriors for one segment."""
        key = self.keys.bandit(segment)
        stored, landmarks = self._framed(
            ("bandit", segment), lambda: self.store.top(key, self.store.zcard(key))
        )
        return self.bandit.posteriors(stored, landmarks, now_s)

    def segments(self) -> list[str]:
        """Every bandit segment with stored counts, most recently updated first."""
        return self._lists.get("segments", lambda: self.bandit.segments(self.store), stale_ok=True)

    def ranker(self) -> RankerWeights:
        """The combined ranker parts, reloaded every few seconds."""
        return self._model.get("ranker", lambda: self.rankers.load(self.store), stale_ok=True)

    def last_good(self, k: int) -> Ranked:
        """The last global trending list read, for degraded feeds ([] if none ever was): the
        shortest one that has ``k`` items, else the longest."""
        lists = sorted(self._last_good.items())
        fits = [ranked for length, ranked in lists if length >= k]
        chosen = fits[0] if fits else (lists[-1][1] if lists else [])
        return chosen[:k]

    # --- per item ---------------------------------------------------------------------------

    def counts(self, items: Sequence[str], now_s: float) -> dict[str, tuple[float, float]]:
        """Decayed short and long trending counts of ``items`` (0 when absent)."""
        short, long_ = self.store.zscores_many(
            [self.keys.trending(self.short_half_life), self.keys.trending(self.long_half_life)],
            items,
        )
        return self._counts(items, short, long_, now_s)

    def popularity(self, item_id: str, now_s: float) -> Popularity:
        """One item's decayed trending counts and all-time count: one round trip."""
        short, long_, all_time = self.store.zscores_many(
            [
                self.keys.trending(self.short_half_life),
                self.keys.trending(self.long_half_life),
                self.keys.popularity_all_time(),
            ],
            [item_id],
        )
        (counts,) = self._counts([item_id], short, long_, now_s).values()
        return Popularity(counts[0], counts[1], all_time[0] or 0.0)

    def metas(self, items: Sequence[str]) -> list[ItemMeta | None]:
        """Catalog meta of each item: from the replica's catalog, else the store."""
        view = self._catalog_view()
        if view is not None:
            return [view.get(i) for i in items]
        return self.catalog.records(self.store, items)

    def item_record(self, item_id: str) -> ItemRecord:
        """An item's catalog record as the store holds it, and when it was deleted."""
        record = self.store.hgetall(self.keys.item(item_id))
        return ItemRecord(ItemMeta.from_record(record), deletion_time(record))

    # --- the deployment --------------------------------------------------------------------

    def ping(self) -> bool:
        """Whether the store answers."""
        return self.store.ping()

    def heartbeats(self) -> dict[str, dict[str, Any]]:
        """Each worker's last heartbeat, by worker id; an unreadable one is skipped."""
        beats: dict[str, dict[str, Any]] = {}
        for worker_id, raw in self.store.hgetall(self.keys.workers()).items():
            try:
                beat = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.warning("unreadable heartbeat of worker %s; ignoring it", worker_id)
                continue
            if isinstance(beat, dict):
                beats[worker_id] = beat
        return beats

    def _counts(
        self,
        items: Sequence[str],
        short: Sequence[float | None],
        long_: Sequence[float | None],
        now_s: float,
    ) -> dict[str, tuple[float, float]]:
        landmarks = self.landmarks()
        fs = self.trending.factor(landmarks, self.short_half_life, now_s)
        fl = self.trending.factor(landmarks, self.long_half_life, now_s)
        return {
            i: ((s or 0.0) * fs, (x or 0.0) * fl)
            for i, s, x in zip(items, short, long_, strict=True)
        }


def _state(raw: bytes | None, dim: int) -> EmbeddingState | None:
    if raw is None:
        return None
    try:
        return EmbeddingState.from_bytes(raw, dim)
    except ValueError:
        log.warning("unreadable embedding state (%d bytes); ignoring it", len(raw))
        return None


def age_hours(meta: ItemMeta | None, now_s: float) -> float:
    """An item's age in hours (0 when unknown or in the future)."""
    if meta is None or meta.created_at_ms <= 0:
        return 0.0
    return max(now_s - meta.created_at_ms / 1000.0, 0.0) / 3600.0
