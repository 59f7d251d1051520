"""The pipelined worker ends with exactly the state of the plain one, failures included."""

from __future__ import annotations

import threading
import time

import pytest

from features.batch import WriteBatch
from features.errors import ConflictError, StoreUnavailableError
from features.keys import Keys
from features.settings import FeatureSettings
from features.stores.memory_store import InMemoryStore
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.io.bus import InProcessBus
from streams.io.dead_letter import DeadLetterPolicy
from streams.schema import EventValidator
from streams.settings import TopicSettings, WorkerSettings
from streams.worker.default_processors import default_processors
from streams.worker.pipeline import run_pipeline
from streams.worker.pipelined import PipelinedWorker
from tests.state import assert_same_state, readable_state

NOW = 1_800_000_000_000
BATCH = 250
FEATURES = FeatureSettings()


def stream() -> list:  # type: ignore[type-arg]
    sim = StreamSimulator(SimulatorConfig(users=200, items=400), seed=8)
    return [*sim.initial_items(NOW), *sim.events(6_000, start_ms=NOW)]


class FailingStore(InMemoryStore):
    """Fails chosen commits, before or after writing (a lost reply)."""

    def __init__(self, fail_at: dict[int, str]) -> None:
        super().__init__()
        self.fail_at, self.calls = fail_at, 0

    def commit(self, batch: WriteBatch) -> None:
        self.calls += 1
        how = self.fail_at.pop(self.calls, None)
        if how == "conflict":
            raise ConflictError("test conflict")
        if how == "down":
            raise StoreUnavailableError("test outage")
        super().commit(batch)
        if how == "lost-reply":
            raise StoreUnavailableError("test: applied, reply lost")


def make_worker(
    bus: InProcessBus, store: InMemoryStore, settings: WorkerSettings
) -> PipelinedWorker:
    topics, keys = bus.topics, Keys("sr")
    return PipelinedWorker(
        source=bus.source(topics.worker_inputs, settings.group_id),
        store=store,
        keys=keys,
        processors=default_processors(keys, FEATURES),
        validator=EventValidator(embedding_dim=64, max_payload_bytes=65536, max_future_ms=10**12),
        dead_letter=DeadLetterPolicy(bus, topics.dead_letter),
        topics=topics,
        settings=settings,
        worker_id="pipelined",
        clock=lambda: NOW / 1000.0,
    )


def run_until_drained(worker: PipelinedWorker) -> None:
    """Run the worker in a thread until the bus is drained, then stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 60
    while any(worker.source.lag().values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()  # the worker lands its last commit before it stops
    thread.join(30)
    assert not thread.is_alive()


def run_pipelined(events: list, store: InMemoryStore) -> PipelinedWorker:  # type: ignore[type-arg]
    topics = TopicSettings()
    bus = InProcessBus(partitions=topics.partitions, topics=topics)  # as run_pipeline
    for event in events:
        bus.send(event)
    worker = make_worker(bus, store, WorkerSettings(batch_size=BATCH, heartbeat_s=300))
    run_until_drained(worker)
    return worker


@pytest.mark.parametrize(
    "failures",
    [{}, {5: "conflict"}, {9: "down", 10: "down"}, {7: "lost-reply"}],
    ids=["clean", "conflict", "outage", "lost-reply"],
)
def test_same_state_as_the_plain_worker(failures: dict[int, str]) -> None:
    events = stream()
    # Same batches for both: which events share a batch decides what an interaction finds in
    # the catalog (items and interactions travel on different topics).
    expected_store, _, _ = run_pipeline(
        events, InMemoryStore(), now_ms=NOW, worker=WorkerSettings(batch_size=BATCH)
    )
    store = FailingStore(dict(failures))
    worker = run_pipelined(events, store)
    assert worker.stats.applied + worker.stats.skipped_duplicates >= len(events)
    keys = Keys("sr")
    assert_same_state(
        readable_state(store, keys, FEATURES, NOW / 1000),
        readable_state(expected_store, keys, FEATURES, NOW / 1000),
    )


class SlowStore(InMemoryStore):
    """Batch commits (the guarded ones, not heartbeats) take 0.3 s to land."""

    def commit(self, batch: WriteBatch) -> None:
        if batch.guards:
            time.sleep(0.3)
        super().commit(batch)


class Stepped:
    """A pipelined worker on one partition of a slow store, driven a batch at a time."""

    def __init__(self) -> None:
        self.bus = InProcessBus(partitions=1)
        self.keys = Keys("sr")
        self.store = SlowStore()
        self.worker = make_worker(self.bus, self.store, WorkerSettings(heartbeat_s=300))
        self.stop = threading.Event()

    def next_batch(self) -> None:
        """Plan what is on the bus and submit its commit (landing the one before)."""
        self.worker._pipeline(self.worker.source.poll_batch(100, 0.01), self.stop)

    def finish(self) -> None:
        """Land the commit in flight."""
        self.worker._finish(self.stop)


def test_a_batch_sees_the_items_of_the_batch_still_in_flight() -> None:
    from streams.schema import Interaction, Item

    run = Stepped()
    bus, keys, store, next_batch = run.bus, run.keys, run.store, run.next_batch

    # Batch 0 touches both topics, so later batches find both checkpoints in the cache.
    bus.send(Item(item_id="zz", ts=NOW, category="misc"))
    bus.send(Interaction(event_id="e0", user_id="other", item_id="zz", type="view", ts=NOW))
    next_batch()
    bus.send(Item(item_id="n1", ts=NOW, category="news", tags=["x"]))
    next_batch()  # batch 1 (items only) is submitted and takes 0.3 s to land
    bus.send(Interaction(event_id="e", user_id="u", item_id="n1", type="click", ts=NOW))
    next_batch()  # batch 2 is computed while batch 1 is in flight
    run.finish()
    assert [i for i, _ in store.top(keys.trending(3600.0, "cat:news"), 5)] == ["n1"]
    assert store.get_bytes([keys.session_embedding("u")])[0] is not None
    assert store.hgetall(keys.item("n1"))["stub"] == "0"


def test_a_re_sent_event_is_caught_while_its_first_copy_is_in_flight() -> None:
    from streams.schema import Interaction

    run = Stepped()
    bus, keys, store = run.bus, run.keys, run.store
    click = Interaction(event_id="e1", user_id="u", item_id="i", type="click", ts=NOW)
    bus.send(Interaction(event_id="e0", user_id="u", item_id="i", type="view", ts=NOW))
    run.next_batch()  # the checkpoint, cached
    run.finish()
    bus.send(click)
    run.next_batch()  # in flight for 0.3 s
    bus.send(click)
    run.next_batch()  # the re-send, planned now
    run.finish()
    (dead,) = bus.read(bus.topics.dead_letter)
    assert b"duplicate event_id 'e1'" in dead.headers["x-reason"]
    weights = FEATURES.event_weights
    assert dict(store.top(keys.popularity_all_time(), 5))["i"] == pytest.approx(
        weights["view"] + weights["click"]
    )


def test_re_sent_events_leave_the_plain_worker_state_and_count_once() -> None:
    events = stream()
    clicks = [i for i, e in enumerate(events) if getattr(e, "type", None) == "click"][::25]
    resent = list(events)
    for n, i in enumerate(clicks):  # each copy lands a batch or more after its original
        resent.insert(min(i + BATCH + 1 + n, len(resent)), events[i])
    expected_store, _, bus = run_pipeline(
        resent, InMemoryStore(), now_ms=NOW, worker=WorkerSettings(batch_size=BATCH)
    )
    once_store, _, _ = run_pipeline(
        events, InMemoryStore(), now_ms=NOW, worker=WorkerSettings(batch_size=BATCH)
    )
    store = SlowStore()
    worker = run_pipelined(resent, store)
    keys = Keys("sr")
    assert worker.stats.dead_lettered == len(clicks)
    assert len(bus.read(bus.topics.dead_letter)) == len(clicks)
    assert_same_state(
        readable_state(store, keys, FEATURES, NOW / 1000),
        readable_state(expected_store, keys, FEATURES, NOW / 1000),
    )
    popularity = keys.popularity_all_time()
    assert dict(store.top(popularity, 10**6)) == pytest.approx(
        dict(once_store.top(popularity, 10**6))
    )


@pytest.mark.parametrize(
    "failures",
    [{3: "conflict"}, {4: "down", 5: "down"}, {3: "lost-reply"}],
    ids=["conflict", "outage", "lost-reply"],
)
def test_a_failed_commit_in_flight_dead_letters_nothing_twice(failures: dict[int, str]) -> None:
    from streams.schema import Interaction

    topics = TopicSettings()
    bus = InProcessBus(partitions=1, topics=topics)
    rejects = 0
    for n in range(2_000):
        bus.send(
            Interaction(event_id=f"e{n}", user_id="u", item_id=f"i{n % 7}", type="view", ts=NOW)
        )
        if n % 100 == 50:  # garbage, and a re-send of the event just sent
            bus.send_raw(topics.interactions, b"u", b"{not json", {})
            bus.send(Interaction(event_id=f"e{n}", user_id="u", item_id="x", type="view", ts=NOW))
            rejects += 2
    worker = make_worker(bus, FailingStore(dict(failures)), WorkerSettings(batch_size=BATCH))
    run_until_drained(worker)
    # A lost reply's batch did land: its redo skips it by offset.
    assert worker.stats.applied + worker.stats.skipped_duplicates >= 2_000
    assert len(bus.read(topics.dead_letter)) == rejects == worker.stats.dead_lettered
