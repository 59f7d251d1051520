"""What a serving process holds: the store, the event sink and the readers built on them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from features.catalog import Catalog
from features.keys import Keys
from features.seen import SeenSet
from features.settings import FeatureSettings
from features.store import Store
from features.trending import Trending
from streams.replica import IndexReplica
from streams.schema import EventValidator
from streams.transport import EventSink

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
    trending: Trending = field(init=False)
    seen: SeenSet = field(init=False)
    catalog: Catalog = field(init=False)
    on_close: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.trending = Trending(self.keys, self.features.half_lives_s, self.features.event_weights)
        self.seen = SeenSet(
            self.keys, max_items=self.features.seen_max_items, ttl_s=self.features.seen_ttl_s
        )
        self.catalog = Catalog(self.keys)

    def close(self) -> None:
        """Run the close hooks, newest first."""
        for hook in reversed(self.on_close):
            hook()
