"""The feed service: runs the funnel, logs the impression, records metrics.

The HTTP layer only calls :meth:`FeedService.feed` and :meth:`FeedService.similar`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from features.errors import StreamrecError
from serving.funnel.context import FeedRequest
from serving.funnel.funnel import POLICY, FeedResult, Funnel
from serving.metrics import FeedMetrics
from streams.io.transport import EventSink
from streams.schema import Impression, ImpressionSlot

log = logging.getLogger(__name__)


def impression_of(result: FeedResult, method: str) -> Impression:
    """The impression event of a served feed: per slot the item, source, position, score,
    propensity and the ranker's inputs."""
    return Impression(
        request_id=result.request.request_id,
        user_id=result.request.user_id,
        ts=int(result.request.now_s * 1000),
        policy=POLICY,
        policy_version=result.policy_version,
        segment=result.segment,
        propensity_method=method,
        feature_names=result.feature_names or None,
        slots=[
            ImpressionSlot(
                item_id=slot.candidate.item_id,
                position=position,
                source=slot.source,
                score=slot.candidate.score,
                propensity=min(max(slot.propensity, 0.0), 1.0),
                features=(
                    [float(v) for v in slot.candidate.features]
                    if slot.candidate.features is not None and result.feature_names
                    else None
                ),
                source_probabilities=(
                    dict(slot.probabilities) if slot.probabilities is not None else None
                ),
            )
            for position, slot in enumerate(result.slots)
        ],
    )


class FeedService:
    """Serves feeds and similar items, logging every served feed as an impression."""

    def __init__(self, funnel: Funnel, sink: EventSink, metrics: FeedMetrics) -> None:
        self.funnel = funnel
        self.sink = sink
        self.metrics = metrics
        self._warned = threading.Event()

    def feed(self, request: FeedRequest) -> FeedResult:
        """The user's feed; its impression is queued without waiting for delivery."""
        started = time.perf_counter()
        result = self.funnel.feed(request)
        if result.slots and not result.degraded:
            self._log(result)
        self.metrics.observe_feed(result, time.perf_counter() - started)
        return result

    def similar(self, request: FeedRequest) -> FeedResult:
        """Items like ``request.item_id``."""
        return self.funnel.similar_items(request)

    def _log(self, result: FeedResult) -> None:
        try:
            # The producer queues and returns; delivery happens on its own thread.
            self.sink.send(impression_of(result, self.funnel.propensity_method))
        except (StreamrecError, BufferError) as exc:
            # The feed is still worth serving; the bandit only misses this one impression.
            self.metrics.impressions_dropped.inc()
            if not self._warned.is_set():
                self._warned.set()
                log.warning("impressions are being dropped: %s", exc)


def feed_json(result: FeedResult, debug: bool) -> dict[str, Any]:
    """The response body of a feed."""
    body: dict[str, Any] = {
        "user_id": result.request.user_id,
        "request_id": result.request.request_id,
        "degraded": result.degraded,
        "segment": result.segment,
        "policy_version": result.policy_version,
        "items": [
            {
                "item_id": slot.candidate.item_id,
                "score": slot.candidate.score,
                "source": slot.source,
                "sources": sorted(slot.candidate.sources),
                "propensity": slot.propensity,
                "category": slot.candidate.meta.category if slot.candidate.meta else None,
                "creator": slot.candidate.meta.creator if slot.candidate.meta else None,
            }
            for slot in result.slots
        ],
    }
    if debug:
        body["trace"] = result.trace.as_dict()
    return body
