"""The dashboard's sampler: every half second, one snapshot of the live state, published to
every connected browser through a bounded hub."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any

import orjson

from features.errors import StoreUnavailableError
from features.keys import GLOBAL, Keys
from serving.dashboard.snapshot import StreamRates, TrendingTracker, funnel_summary, slot_shares
from serving.metrics import FeedMetrics
from serving.resources import Resources

log = logging.getLogger(__name__)

TOP = 10
CATEGORIES = 6
HISTORY = 120
FUNNEL_WINDOW_S = 5.0
SHARES_WINDOW_S = 30.0
SEGMENTS = 8


class Hub:
    """Fans snapshots out to subscribers. Each has a small queue; when a slow browser's
    queue is full its oldest snapshot is dropped, so the sampler never waits for anyone."""

    def __init__(self, max_subscribers: int = 100, queue_size: int = 4) -> None:
        self.max_subscribers = max_subscribers
        self.queue_size = queue_size
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[bytes]]] = set()
        self._lock = threading.Lock()
        self.dropped = 0

    def subscribe(self) -> asyncio.Queue[bytes] | None:
        """A queue for the calling event loop; None when the hub is full."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=self.queue_size)
        with self._lock:
            if len(self._subscribers) >= self.max_subscribers:
                return None
            self._subscribers.add((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes]) -> None:
        """Forget a subscriber."""
        with self._lock:
            self._subscribers = {s for s in self._subscribers if s[1] is not queue}

    def publish(self, data: bytes) -> None:
        """Offer ``data`` to every subscriber (from any thread)."""
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            try:
                loop.call_soon_threadsafe(self._offer, queue, data)
            except RuntimeError:  # its loop is closed: the client is gone
                self.unsubscribe(queue)

    def _offer(self, queue: asyncio.Queue[bytes], data: bytes) -> None:
        if queue.full():
            queue.get_nowait()
            self.dropped += 1
        queue.put_nowait(data)

    def __len__(self) -> int:
        with self._lock:
            return len(self._subscribers)


class DashboardSampler:
    """Builds snapshots in a background thread and keeps the last few minutes of them."""

    def __init__(
        self,
        resources: Resources,
        metrics: FeedMetrics,
        *,
        interval_s: float = 0.5,
        worker_stale_s: float = 15.0,
    ) -> None:
        self.r = resources
        self.metrics = metrics
        self.interval_s = interval_s
        self.worker_stale_s = worker_stale_s
        self.hub = Hub()
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.trending = TrendingTracker()
        self.rates = StreamRates()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Sample until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                snapshot = self.sample(time.time())
            except StoreUnavailableError as exc:
                snapshot = {"ts": int(time.time() * 1000), "degraded": str(exc)}
            except Exception:  # noqa: BLE001 - the dashboard must outlive a bad sample
                log.exception("dashboard sample failed")
                snapshot = None
            if snapshot is not None:
                self.history.append(snapshot)
                self.hub.publish(orjson.dumps(snapshot, option=orjson.OPT_SERIALIZE_NUMPY))
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def sample(self, now_s: float) -> dict[str, Any]:
        """One snapshot (see the page's contract in serving/dashboard/static)."""
        return {
            "ts": int(now_s * 1000),
            "trending": self._trending(now_s),
            "stream": self._stream(now_s),
            "funnel": funnel_summary(self._recent(FUNNEL_WINDOW_S), FUNNEL_WINDOW_S),
            "bandit": self._bandit(now_s),
        }

    def _recent(self, window_s: float) -> list[Any]:
        since = time.monotonic() - window_s
        return [s for s in list(self.metrics.recent) if s.at >= since]

    def _trending(self, now_s: float) -> dict[str, Any]:
        live = self.r.live
        categories = live.categories(CATEGORIES)
        scopes = [(GLOBAL, GLOBAL)] + [(c, Keys.category_scope(c)) for c in categories]
        rising = {scope: {i for i, _ in live.rising(scope, TOP * 2, now_s)} for _, scope in scopes}
        half_lives = live.trending.half_lives_s
        lists: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for half_life in half_lives:
            key = f"{half_life:g}"
            lists[key] = {}
            for name, scope in scopes:
                ranked = live.trending_list(half_life, scope, TOP, now_s)
                lists[key][name] = self.trending.rows(f"{key}:{name}", ranked, rising[scope])
        return {
            "half_lives": [{"key": f"{h:g}", "label": _label(h)} for h in half_lives],
            "categories": categories,
            "lists": lists,
        }

    def _stream(self, now_s: float) -> dict[str, Any]:
        beats = [
            beat
            for beat in self.r.live.heartbeats().values()
            if now_s - float(beat.get("ts", 0)) <= self.worker_stale_s
        ]
        stream = self.rates.update(now_s, beats)
        if self.r.replication is not None:
            # What the API's reads trail the worker's writes by, on top of freshness.
            stream["replica"] = self.r.replication.summary()
        return stream

    def _bandit(self, now_s: float) -> dict[str, Any]:
        live = self.r.live
        shares = slot_shares(self._recent(SHARES_WINDOW_S))
        segments = list(dict.fromkeys([*shares, *live.segments()[:SEGMENTS]]))
        out: dict[str, dict[str, dict[str, float | None]]] = {}
        for segment in segments:
            posteriors = live.posteriors(segment, now_s)
            sources = sorted(set(posteriors) | set(shares.get(segment, {})))
            out[segment] = {
                source: {
                    "share": shares.get(segment, {}).get(source, 0.0),
                    "ctr": posteriors[source].mean if source in posteriors else None,
                    "shown": posteriors[source].shown if source in posteriors else 0.0,
                }
                for source in sources
            }
        return {"segments": out}


def _label(half_life_s: float) -> str:
    """``3600`` → ``1h``, ``86400`` → ``24h``, ``90`` → ``90s``."""
    if half_life_s % 3600 == 0:
        return f"{half_life_s / 3600:g}h"
    if half_life_s % 60 == 0:
        return f"{half_life_s / 60:g}m"
    return f"{half_life_s:g}s"
