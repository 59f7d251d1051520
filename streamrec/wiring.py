"""Builds the system's parts from settings, for the Kafka mode and the embedded mode alike."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from features.ann import HnswIndex
from features.keys import Keys
from features.sharding import ShardLayout
from features.store import ShardableStore, Store
from features.stores.memory_store import InMemoryStore
from features.stores.redis_store import RedisStore
from features.stores.replica import ReplicaProbe, ReplicaReadStore, ReplicationLag
from features.stores.sharded_store import ShardedStore, check_layout
from serving.resources import Resources, TransportProbe
from streamrec.settings import Settings
from streams.io.bus import InProcessBus
from streams.io.dead_letter import DeadLetterPolicy
from streams.io.kafka import BrokerProbe, KafkaSource, KafkaTailSource, RawProducer
from streams.io.producer import EventProducer
from streams.io.replica import IndexReplica, SourceFactory
from streams.io.transport import EventSink, MessageSource, RawSink
from streams.schema import EventValidator
from streams.worker.default_processors import default_processors
from streams.worker.pipelined import PipelinedWorker
from streams.worker.runtime import Backoff, Worker

log = logging.getLogger(__name__)


def validator(settings: Settings) -> EventValidator:
    """The event validator for the configured dimension and limits."""
    return EventValidator(
        embedding_dim=settings.features.embedding_dim,
        max_payload_bytes=settings.worker.max_payload_bytes,
        max_future_ms=settings.worker.max_future_ms,
    )


def shard_layout(settings: Settings) -> ShardLayout:
    """How the namespace's keys are laid out over ``redis_shards`` shards."""
    return ShardLayout(settings.namespace, settings.redis_shards)


def live_store(settings: Settings) -> Store:
    """The Redis store of the live state, split into ``redis_shards`` shards when there are
    more than one."""
    return sharded(RedisStore(settings.redis_url), settings)


def sharded(store: ShardableStore, settings: Settings) -> Store:
    """``store`` as the namespace's layout needs it: itself, or split into shards."""
    if settings.redis_shards == 1:
        return store
    return ShardedStore(store, shard_layout(settings))


def wait_for_store(
    store: Store,
    what: str,
    stop: threading.Event | None = None,
    *,
    layout: ShardLayout | None = None,
    record_layout: bool = False,
) -> bool:
    """Block until the store answers, logging one line while it does not; False if stopped.
    With ``layout``, then refuse a store written with another number of shards
    (:class:`features.stores.sharded_store.ShardLayoutError`)."""
    backoff = Backoff(0.2, 5.0)
    stop = stop or threading.Event()
    warned = False
    while not store.ping():
        if not warned:
            log.error("%s: store unreachable; retrying with backoff", what)
            warned = True
        if stop.wait(backoff.next()):
            return False
    if warned:
        log.info("%s: store reachable", what)
    if layout is not None:
        check_layout(store, layout, record=record_layout)
    return True


def build_worker(
    settings: Settings,
    source: MessageSource,
    store: Store,
    dead_letters: RawSink,
    worker_id: str | None = None,
    *,
    pipelined: bool = False,
    commit_target_ms: float = 0.0,
) -> Worker:
    """A worker over any transport: the composition both modes share. ``commit_target_ms``
    above 0 sizes batches to keep each commit near it (see streams/worker/batch_limit.py)."""
    keys = Keys(settings.namespace)
    return (PipelinedWorker if pipelined else Worker)(
        source=source,
        store=store,
        keys=keys,
        processors=default_processors(keys, settings.features, settings.learning),
        validator=validator(settings),
        dead_letter=DeadLetterPolicy(dead_letters, settings.topics.dead_letter),
        topics=settings.topics,
        settings=settings.worker,
        worker_id=worker_id,
        commit_target_ms=commit_target_ms,
    )


def kafka_worker(settings: Settings, worker_id: str | None = None) -> Worker:
    """A worker consuming the interactions and items topics into Redis."""
    store = live_store(settings)
    source = KafkaSource(
        settings.kafka_bootstrap,
        settings.topics.worker_inputs,
        settings.worker.group_id,
        settings.kafka_config,
        instance_id=worker_id,
    )
    dead_letters = RawProducer(settings.kafka_bootstrap, settings.kafka_config, name="dead-letter")
    # Against Redis, commits take long enough to be worth overlapping with the next batch.
    # Redis serves the feed API too: keep each commit short enough not to stall its reads.
    return build_worker(
        settings,
        source,
        store,
        dead_letters,
        worker_id,
        pipelined=True,
        commit_target_ms=settings.worker.max_commit_ms,
    )


def kafka_resources(settings: Settings) -> Resources:
    """Serving resources on Redis (reading its replica when one is configured), producing
    to Kafka."""
    store, replication, closers = _serving_store(settings)
    producer = EventProducer(settings.kafka_bootstrap, settings.topics, settings.kafka_config)
    if not store.ping():
        log.error(
            "serve: store unreachable at %s; /health reports it until it answers",
            settings.redis_url,
        )
    else:
        check_layout(store, shard_layout(settings), record=False)
    replica = index_replica(
        settings,
        lambda start: KafkaTailSource(
            settings.kafka_bootstrap, settings.topics.items, settings.kafka_config, start
        ),
        settings.serving.index_snapshot_dir,
    )
    return _started(
        settings,
        store,
        producer,
        BrokerProbe(producer.raw),
        replica,
        closers=[*closers, store.close, producer.close],
        replication=replication,
    )


def _serving_store(
    settings: Settings,
) -> tuple[Store, ReplicationLag | None, list[Callable[[], None]]]:
    """The store the API reads, the replica's lag when it reads one, and what to stop."""
    primary = RedisStore(settings.redis_url)
    if settings.redis_replica_url is None:
        return sharded(primary, settings), None, []
    serving = settings.serving
    lag = ReplicationLag(max_lag_ms=serving.max_replica_lag_ms)
    # A store of its own: WAIT holds its connection for up to the timeout.
    probes = RedisStore(settings.redis_url)
    key = Keys(settings.namespace).replica_probe(uuid.uuid4().hex[:12])
    timeout_ms = max(1, int(serving.max_replica_lag_ms))
    probe = ReplicaProbe(
        lambda: probes.replication_lag_ms(key, timeout_ms),
        lag,
        interval_s=serving.replica_probe_interval_ms / 1000.0,
    )
    probe.start()
    replica = RedisStore(settings.redis_replica_url)
    store = sharded(ReplicaReadStore(primary, replica, lag), settings)
    # Close hooks run newest first: the probe stops before its connection closes.
    return store, lag, [probes.close, probe.stop]


def embedded_resources(settings: Settings, bus: InProcessBus, store: InMemoryStore) -> Resources:
    """Serving resources on the in-process bus and in-memory store."""
    replica = index_replica(
        settings, lambda start: bus.tail_source(settings.topics.items, start), snapshot_dir=None
    )
    return _started(settings, store, bus, lambda: (True, "in-process bus"), replica, closers=[])


def _started(
    settings: Settings,
    store: Store,
    sink: EventSink,
    probe: TransportProbe,
    replica: IndexReplica,
    *,
    closers: list[Callable[[], None]],
    replication: ReplicationLag | None = None,
) -> Resources:
    """Resources of either mode, with the index replica following its topic."""
    resources = Resources(
        store=store,
        sink=sink,
        keys=Keys(settings.namespace),
        features=settings.features,
        validator=validator(settings),
        transport_probe=probe,
        replica=replica,
        learning=settings.learning,
        funnel=settings.funnel,
        max_late_ms=settings.worker.allowed_lateness_ms,
        replication=replication,
    )
    resources.on_close.extend([*closers, replica.stop])
    replica.start()
    return resources


def index_replica(
    settings: Settings, source_factory: SourceFactory, snapshot_dir: Path | None
) -> IndexReplica:
    """The serving process's ANN replica of the items topic."""
    f = settings.features
    return IndexReplica(
        topic=settings.topics.items,
        dim=f.embedding_dim,
        source_factory=source_factory,
        validator=validator(settings),
        snapshot_dir=snapshot_dir,
        snapshot_every_s=settings.serving.index_snapshot_every_s,
        index_factory=lambda: HnswIndex(
            f.embedding_dim,
            M=f.ann_m,
            ef_construction=f.ann_ef_construction,
            ef_search=f.ann_ef_search,
        ),
    )
