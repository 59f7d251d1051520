"""What a serving process holds: the store, the event sink, the replica and the funnel's
live-state reader built on them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from features.keys import Keys
from features.settings import FeatureSettings, LearningSettings
from features.store import Store
from features.stores.replica import ReplicationLag
from serving.funnel.live import LiveReader
from serving.funnel.settings import FunnelSettings
from streams.io.replica import IndexReplica
from streams.io.transport import EventSink
from streams.schema import EventValidator

#: Answers (ok, detail) about the event transport without raising.
TransportProbe = Callable[[], tuple[bool, str]]


@dataclass
class Resources:
    """Heavy, long-lived objects, built once in the app's lifespan."""

    store: Store
    sink: EventSink
    keys: Keys
    features: FeatureSettings
    validator: EventValidator
    transport_probe: TransportProbe
    replica: IndexReplica | None = None
    learning: LearningSettings = field(default_factory=LearningSettings)
    funnel: FunnelSettings = field(default_factory=FunnelSettings)
    # Seconds on the clock the live reader's caches age by (a replay passes event time).
    clock: Callable[[], float] = time.monotonic
    #: POST /events refuses interactions older than the wall clock minus this, which the
    #: worker would dead-letter as late (its ``allowed_lateness_ms``); None accepts any age.
    max_late_ms: int | None = None
    #: The read replica's measured lag, when the store reads one (None: the primary only).
    replication: ReplicationLag | None = None
    live: LiveReader = field(init=False)
    on_close: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        replica = self.replica
        self.live = LiveReader(
            self.store,
            self.keys,
            self.features,
            self.learning,
            index=lambda: replica.index if replica is not None else None,
            catalog_view=lambda: replica.catalog if replica is not None else None,
            lists_ttl_s=self.funnel.live_lists_ttl_s,
            model_reload_s=self.funnel.model_reload_s,
            clock=self.clock,
        )

    def close(self) -> None:
        """Run the close hooks, newest first."""
        for hook in reversed(self.on_close):
            hook()
