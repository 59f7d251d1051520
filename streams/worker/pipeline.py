"""Drive events through the real worker runtime without a broker: tests, replays, evaluation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from features.keys import Keys
from features.settings import FeatureSettings, LearningSettings
from features.store import Store
from features.stores.memory_store import InMemoryStore
from streams.io.bus import InProcessBus
from streams.io.dead_letter import DeadLetterPolicy
from streams.schema import Event, EventValidator
from streams.settings import TopicSettings, WorkerSettings
from streams.worker.default_processors import default_processors
from streams.worker.processors import Processor
from streams.worker.runtime import Worker


def run_pipeline(
    events: Iterable[Event | bytes],
    store: Store | None = None,
    *,
    namespace: str = "sr",
    features: FeatureSettings | None = None,
    learning: LearningSettings | None = None,
    worker: WorkerSettings | None = None,
    processors: Sequence[Processor] | None = None,
    bus: InProcessBus | None = None,
    now_ms: int | None = None,
) -> tuple[Store, Worker, InProcessBus]:
    """Put ``events`` on an in-process bus and apply them all with a :class:`Worker`.

    Raw ``bytes`` go onto the interactions topic as they are, to exercise bad-input handling.

    Examples:
        >>> from streams.schema import Interaction
        >>> store, worker, _ = run_pipeline(
        ...     [Interaction(event_id="e", user_id="u", item_id="i", type="click", ts=1_000)]
        ... )
        >>> worker.stats.applied, store.zcard("{sr}:seen:u")
        (1, 1)
    """
    features = features or FeatureSettings()
    worker_settings = worker or WorkerSettings()
    topics = bus.topics if bus is not None else TopicSettings()
    bus = bus or InProcessBus(partitions=topics.partitions, topics=topics)
    store = store if store is not None else InMemoryStore()
    for event in events:
        if isinstance(event, bytes):
            bus.send_raw(topics.interactions, None, event, {})
        else:
            bus.send(event)
    keys = Keys(namespace)
    runner = Worker(
        source=bus.source(topics.worker_inputs, worker_settings.group_id),
        store=store,
        keys=keys,
        processors=processors
        if processors is not None
        else default_processors(keys, features, learning),
        validator=EventValidator(
            embedding_dim=features.embedding_dim,
            max_payload_bytes=worker_settings.max_payload_bytes,
            max_future_ms=worker_settings.max_future_ms,
        ),
        dead_letter=DeadLetterPolicy(bus, topics.dead_letter),
        topics=topics,
        settings=worker_settings,
        worker_id="pipeline",
        clock=(lambda: now_ms / 1000.0) if now_ms is not None else None,
    )
    while runner.run_once() or any(runner.source.lag().values()):
        pass
    return store, runner, bus
