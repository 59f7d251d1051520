"""The worker runtime on the in-process bus: batches, dead letters, exactly-once effects."""

from __future__ import annotations

import threading

import msgspec
import pytest

from features.batch import WriteBatch
from features.errors import StoreUnavailableError
from features.keys import Keys
from features.settings import FeatureSettings
from features.stores.memory_store import InMemoryStore
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.io.bus import InProcessBus
from streams.io.dead_letter import REASON, SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC
from streams.schema import Interaction, Item
from streams.settings import TopicSettings, WorkerSettings
from streams.worker.dedup import bucket_of
from streams.worker.default_processors import default_processors
from streams.worker.pipeline import run_pipeline
from tests.state import assert_same_state, readable_state

NOW = 1_800_000_000_000
KEYS = Keys("sr")


def click(n: int, user: str = "u1", item: str = "i1", kind: str = "click") -> Interaction:
    return Interaction(event_id=f"e{n}", user_id=user, item_id=item, type=kind, ts=NOW + n)  # type: ignore[arg-type]


def test_events_become_popularity_and_seen_state() -> None:
    events = [click(1, "u1", "a"), click(2, "u2", "a"), click(3, "u1", "b", "view")]
    store, worker, _ = run_pipeline(events, now_ms=NOW)
    assert worker.stats.applied == 3
    top = store.top(KEYS.trending(3600.0), 10)
    assert [item for item, _ in top] == ["a", "b"]
    assert store.zscores(KEYS.seen("u1"), ["a", "b", "c"]) == [NOW + 1, NOW + 3, None]


def test_a_malformed_message_is_dead_lettered_and_the_stream_goes_on() -> None:
    bus = InProcessBus(partitions=1)
    events = [
        click(1),
        b"{not json",
        b'{"event_id":"x","user_id":"u","item_id":"i","type":"poke","ts":1}',
        click(2, item="i2"),
    ]
    store, worker, bus = run_pipeline(events, bus=bus, now_ms=NOW)
    assert worker.stats.applied == 2
    assert worker.stats.dead_lettered == 2
    dead = bus.read(TopicSettings().dead_letter)
    assert [m.value for m in dead] == [b"{not json", events[2]]
    first = dead[0].headers
    assert first[SOURCE_TOPIC] == TopicSettings().interactions.encode()
    assert (first[SOURCE_PARTITION], first[SOURCE_OFFSET]) == (b"0", b"1")
    assert b"malformed" in first[REASON]
    assert b"Invalid enum value 'poke'" in dead[1].headers[REASON]
    assert store.zcard(KEYS.seen("u1")) == 2


def test_replayed_events_are_skipped_by_the_offset_table() -> None:
    """A crash after the store commit but before the consumer commit must not double-count."""
    bus = InProcessBus(partitions=1)
    store = InMemoryStore()
    store, first, bus = run_pipeline([click(1), click(2)], store=store, bus=bus, now_ms=NOW)
    before = store.top(KEYS.trending(3600.0), 1)
    # A new group member starting from offset 0 sees the same messages again.
    _, second, _ = run_pipeline(
        [],
        store=store,
        bus=bus,
        now_ms=NOW,
        worker=first.settings.model_copy(update={"group_id": "replayer"}),
    )
    assert second.stats.skipped_duplicates == 2
    assert second.stats.applied == 0
    assert store.top(KEYS.trending(3600.0), 1) == before


def test_items_update_the_catalog_latest_wins() -> None:
    events = [
        Item(item_id="a", ts=NOW, category="news", creator="c"),
        Item(item_id="b", ts=NOW, category="tech"),
        Item(item_id="b", ts=NOW + 1, op="delete"),
    ]
    store, worker, _ = run_pipeline(events, now_ms=NOW)
    assert worker.stats.applied == 3
    assert store.hgetall(KEYS.item("a"))["category"] == "news"
    assert store.hgetall(KEYS.item("b"))["available"] == "0"
    assert [i for i, _ in store.top(KEYS.items_by_time(), 10)] == ["a"]


class FlakyStore(InMemoryStore):
    """Fails the first few commits, like Redis during a restart."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def commit(self, batch: WriteBatch) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailableError("redis unreachable (test)")
        super().commit(batch)


def test_the_worker_waits_out_a_store_outage_without_losing_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FlakyStore(failures=3)
    _, worker, _ = run_pipeline([click(1), click(2, item="i2")], store=store, now_ms=NOW)
    assert worker.stats.applied == 2
    assert store.zcard(KEYS.seen("u1")) == 2
    # One line when it goes down, one when it is back: no log spam per retry.
    assert sum("retrying with backoff" in r.message for r in caplog.records) == 1


def test_a_worker_stopped_during_an_outage_commits_nothing() -> None:
    bus = InProcessBus(partitions=1)
    _, worker, _ = run_pipeline([], bus=bus, now_ms=NOW)
    bus.send(click(1))
    healthy = worker.store
    worker.store = FlakyStore(failures=10**6)
    stop = threading.Event()
    stop.set()
    assert worker.run_once(stop) == 0
    # A restarted worker (same group, fresh position) applies the event once the store is back.
    _, restarted, _ = run_pipeline([], store=healthy, bus=bus, now_ms=NOW)
    assert restarted.stats.applied == 1
    assert healthy.zcard(KEYS.seen("u1")) == 1


def test_same_stream_same_state() -> None:
    from streams.data.simulator import SimulatorConfig, StreamSimulator

    def final_state() -> list[tuple[str, float]]:
        sim = StreamSimulator(SimulatorConfig(users=50, items=200, embedding_dim=64), seed=3)
        events = [*sim.initial_items(NOW), *sim.events(3000, start_ms=NOW)]
        store, _, _ = run_pipeline(events, now_ms=NOW + 10**8)
        return store.top(KEYS.trending(86400.0), 50)

    assert final_state() == final_state()


def test_late_events_beyond_the_allowed_lateness_are_dead_lettered() -> None:
    bus = InProcessBus(partitions=1)
    hour = 3_600_000
    events = [
        click(0),
        click(2 * hour, item="new"),
        click(hour + 1, item="late-ok"),
        click(0, item="too-late"),
    ]
    store, worker, bus = run_pipeline(events, bus=bus, now_ms=NOW + 3 * hour)
    assert worker.stats.applied == 3
    dead = bus.read(TopicSettings().dead_letter)
    assert len(dead) == 1 and b"too-late" in (dead[0].value or b"")
    assert b"allowed lateness" in dead[0].headers[REASON]
    # A late event within the lateness still counts, at its own event time.
    assert store.zscores(KEYS.seen("u1"), ["late-ok"]) == [float(NOW + hour + 1)]
    # The watermark survives restarts: it is stored with the offsets.
    assert store.hgetall(KEYS.watermarks(TopicSettings().interactions)) == {
        "0": str(NOW + 2 * hour)
    }


def test_interactions_on_unknown_items_create_catalog_stubs() -> None:
    store, worker, bus = run_pipeline(
        [click(1, item="ghost"), Item(item_id="real", ts=NOW, category="news")], now_ms=NOW
    )
    assert worker.stats.dead_lettered == 0
    assert store.hgetall(KEYS.item("ghost"))["stub"] == "1"
    assert store.hgetall(KEYS.item("real"))["stub"] == "0"
    # A later real item event replaces the stub.
    run_pipeline(
        [Item(item_id="ghost", ts=NOW + 5, category="tech")], store=store, bus=bus, now_ms=NOW
    )
    assert store.hgetall(KEYS.item("ghost"))["category"] == "tech"
    assert store.hgetall(KEYS.item("ghost"))["stub"] == "0"


def test_categories_come_from_the_catalog() -> None:
    store, _, _ = run_pipeline(
        [Item(item_id="n1", ts=NOW, category="news"), click(1, item="n1"), click(2, item="x")],
        now_ms=NOW,
    )
    assert [i for i, _ in store.top(KEYS.trending(3600.0, "cat:news"), 10)] == ["n1"]
    assert [i for i, _ in store.top(KEYS.trending(3600.0), 10)] == ["x", "n1"]


def test_skips_and_dismisses_are_remembered_as_negatives() -> None:
    store, _, _ = run_pipeline(
        [click(1, item="a"), click(2, item="b", kind="skip"), click(3, item="c", kind="dismiss")],
        now_ms=NOW,
    )
    assert {i for i, _ in store.top(KEYS.negatives("u1"), 10)} == {"b", "c"}
    assert store.zcard(KEYS.seen("u1")) == 3


def test_a_replay_of_old_offsets_never_moves_the_offset_table_back() -> None:
    """After a crash the consumer resumes from its last commit, which may be far behind the
    store. Batches of pure duplicates must leave the table at its high mark, or the
    messages after them would be applied twice."""
    bus = InProcessBus(partitions=1)
    store = InMemoryStore()
    events = [click(n, item=f"i{n}") for n in range(10)]
    run_pipeline(events, store=store, bus=bus, now_ms=NOW)
    offsets_key = KEYS.applied_offsets(TopicSettings().interactions)
    assert store.hgetall(offsets_key) == {"0": "9"}
    # A fresh group member re-reads from offset 0 in small batches.
    _, replayer, _ = run_pipeline(
        [],
        store=store,
        bus=bus,
        now_ms=NOW,
        worker=WorkerSettings(group_id="replayer", batch_size=3),
    )
    assert replayer.stats.skipped_duplicates == 10
    assert replayer.stats.applied == 0
    assert store.hgetall(offsets_key) == {"0": "9"}
    assert store.top(KEYS.popularity_all_time(), 1) == [("i9", 2.0)]


def test_session_and_user_embeddings_follow_what_the_user_engages_with() -> None:
    from features.embeddings import EmbeddingState, vector
    from features.settings import FeatureSettings

    dim = FeatureSettings().embedding_dim
    axis = [[1.0 if j == i else 0.0 for j in range(dim)] for i in range(3)]
    items = [Item(item_id=f"e{i}", ts=NOW, embedding=axis[i]) for i in range(3)]
    clicks = [click(1, item="e0"), click(2, item="e0"), click(3, item="e1", kind="view")]
    store, _, bus = run_pipeline([*items, *clicks], now_ms=NOW)
    raw_session = store.get_bytes([KEYS.session_embedding("u1")])[0]
    assert raw_session is not None and len(raw_session) == 20 + 4 * dim  # float32 bytes
    session = vector(EmbeddingState.from_bytes(raw_session, dim))
    assert session is not None and session[0] > session[1] > 0.0 and abs(session[2]) < 1e-6
    # Dismissing e0 pushes the session away from it; a long gap starts a new session.
    # Later runs reuse the bus: the offset table is per topic partition.
    run_pipeline([click(10, item="e0", kind="dismiss")], store=store, bus=bus, now_ms=NOW)
    pushed = vector(
        EmbeddingState.from_bytes(store.get_bytes([KEYS.session_embedding("u1")])[0], dim)
    )  # type: ignore[arg-type]
    assert pushed is not None and pushed[0] < session[0]
    later = NOW + 3 * 3_600_000
    run_pipeline(
        [Interaction(event_id="late", user_id="u1", item_id="e2", type="click", ts=later)],
        store=store,
        bus=bus,
        now_ms=later,
    )
    fresh = EmbeddingState.from_bytes(store.get_bytes([KEYS.session_embedding("u1")])[0], dim)  # type: ignore[arg-type]
    assert fresh.count == 1 and vector(fresh)[2] > 0.99  # type: ignore[index]
    # The long-term embedding keeps all of it.
    user = EmbeddingState.from_bytes(store.get_bytes([KEYS.user_embedding("u1")])[0], dim)  # type: ignore[arg-type]
    assert user.count == 5


class LostReplyStore(InMemoryStore):
    """Applies the first commit, then reports it as failed, as a timeout after EXEC would."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = False

    def commit(self, batch: WriteBatch) -> None:
        super().commit(batch)
        if not self.lost and any(True for _ in batch):
            self.lost = True
            raise StoreUnavailableError("reply lost (test)")


def test_a_retried_commit_whose_first_attempt_landed_applies_nothing_twice() -> None:
    store = LostReplyStore()
    _, worker, _ = run_pipeline([click(1, item="a"), click(2, item="b")], store=store, now_ms=NOW)
    assert store.lost
    assert worker.stats.conflicts == 1
    assert sorted(store.top(KEYS.popularity_all_time(), 10)) == [("a", 2.0), ("b", 2.0)]


def test_worker_metrics_show_re_sends_and_the_store_state() -> None:
    from streams.worker.metrics import WorkerMetrics

    bus = InProcessBus(partitions=1)
    _, worker, _ = run_pipeline([click(1), click(1), click(2)], bus=bus, now_ms=NOW)
    metrics = WorkerMetrics(worker)
    metrics.update()
    sample = metrics.registry.get_sample_value
    assert sample("streamrec_worker_resent_total") == 1.0
    assert sample("streamrec_worker_dead_lettered_total") == 1.0
    assert sample("streamrec_worker_events_total", {"type": "click"}) == 2.0
    assert sample("streamrec_worker_store_up") == 1.0
    assert sample("streamrec_worker_rewinds_total") == 0.0  # the in-process bus never rewinds
    bus.send(click(3))
    worker.store = FlakyStore(failures=10**6)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    worker.run_once(stop)
    metrics.update()
    assert sample("streamrec_worker_store_up") == 0.0


def test_a_re_sent_event_id_is_dead_lettered_once_even_in_another_batch() -> None:
    bus = InProcessBus(partitions=1)
    store, worker, _ = run_pipeline([click(1)], bus=bus, now_ms=NOW)
    _, worker, _ = run_pipeline([click(1), click(2)], store=store, bus=bus, now_ms=NOW)
    (dead,) = bus.read(bus.topics.dead_letter)
    assert (
        dead.headers[REASON]
        == b"duplicate event_id 'e1': partition 0 already applied it - at `$.event_id`"
    )
    assert store.zscores(KEYS.popularity_all_time(), ["i1"]) == [4.0]  # two clicks of weight 2


def test_event_ids_leave_the_window_behind_the_watermark() -> None:
    window = WorkerSettings(dedup_window_ms=1_000)
    bus = InProcessBus(partitions=1)
    store, _, _ = run_pipeline([click(0)], bus=bus, now_ms=NOW, worker=window)
    ids = KEYS.event_ids(bus.topics.interactions, 0, bucket_of("e0"))
    assert store.zscores(ids, ["e0"]) == [float(NOW)]
    # An id of the same bucket, 5 s or more later: writing the bucket trims it to the window.
    same_bucket = (n for n in range(5_000, 10**7, 1_000) if bucket_of(f"e{n}") == bucket_of("e0"))
    later = next(same_bucket)
    run_pipeline([click(later)], store=store, bus=bus, now_ms=NOW, worker=window)
    assert store.zscores(ids, ["e0", f"e{later}"]) == [None, float(NOW + later)]
    # Out of the window, a re-send counts again: the documented price of a bounded memory.
    run_pipeline([click(0)], store=store, bus=bus, now_ms=NOW, worker=window)
    assert not bus.read(bus.topics.dead_letter)
    off = WorkerSettings(dedup_window_ms=0)
    run_pipeline([click(5_000)], store=store, bus=bus, now_ms=NOW, worker=off)
    assert not bus.read(bus.topics.dead_letter)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5000])
def test_whether_a_copy_is_a_re_send_does_not_depend_on_batch_cuts(batch_size: int) -> None:
    window = WorkerSettings(dedup_window_ms=1_000, batch_size=batch_size)
    stream = [
        click(0),  # e0 at NOW
        click(1),  # e1: copied at once below, a re-send
        click(1),
        click(5_000),  # the partition's clock moves 5 s on: e0 is out of the 1 s window
        click(0),  # so this copy counts again
        click(5_000),  # and this one is a re-send
    ]
    store, worker, bus = run_pipeline(stream, now_ms=NOW, worker=window)
    reasons = [m.headers[REASON] for m in bus.read(bus.topics.dead_letter)]
    assert [r.split(b":")[0] for r in reasons] == [b"duplicate event_id 'e1'"] * 1 + [
        b"duplicate event_id 'e5000'"
    ]
    assert worker.stats.applied == 4 and worker.stats.resent == 2
    assert store.zscores(KEYS.popularity_all_time(), ["i1"]) == [8.0]  # four clicks of 2


class Unrepresentable:
    """A processor whose arithmetic cannot hold one item's events (as an overflowing decay
    would): the worker must set that event aside, not crash-loop on its batch."""

    name = "unrepresentable"

    def apply(self, events: object, reads: object, batch: WriteBatch) -> None:
        if any(e.item_id == "boom" for e in events.interactions):  # type: ignore[attr-defined]
            raise OverflowError("math range error")


def test_an_event_the_processors_cannot_represent_is_dead_lettered_and_the_rest_applied() -> None:
    keys = Keys("sr")
    events = [
        Interaction(
            event_id=f"e{i}",
            user_id=f"u{i}",
            item_id="boom" if i == 6 else "a",
            type="click",
            ts=1_000 + i,
        )
        for i in range(10)
    ]
    processors = [Unrepresentable(), *default_processors(keys, FeatureSettings())]
    store, worker, bus = run_pipeline(events, processors=processors)
    assert worker.stats.applied == 9 and worker.stats.dead_lettered == 1
    (dead,) = bus.read(bus.topics.dead_letter)
    assert b"cannot be applied: OverflowError: math range error" in dead.headers[REASON]
    assert all(store.zcard(keys.seen(f"u{i}")) == (0 if i == 6 else 1) for i in range(10))


def test_a_two_hundred_year_stream_is_applied_whole_however_it_is_cut() -> None:
    """Simulated sessions spread over 1971-2171: no dead letter, and batches of 7 and of 2,000
    leave the same decayed state (every landmark moved by itself, in and across batches)."""
    sim = StreamSimulator(SimulatorConfig(users=50, items=80, new_item_probability=0.0), seed=4)
    start = 31_536_000_000
    catalog = list(sim.initial_items(start))
    stream = list(sim.events(3_000, start_ms=start))
    step = 200 * 365 * 86_400_000 // len(stream)
    spread = [msgspec.structs.replace(e, ts=start + n * step) for n, e in enumerate(stream)]
    now_ms = start + len(stream) * step
    states = []
    for size in (7, 2_000):
        worker = WorkerSettings(batch_size=size, max_future_ms=250 * 365 * 86_400_000)
        store, _, _ = run_pipeline(catalog, worker=worker, now_ms=now_ms)
        store, run, _ = run_pipeline(spread, store, worker=worker, now_ms=now_ms)
        assert run.stats.dead_lettered == 0 and run.stats.applied == len(spread)
        # Whole batches: none had to be halved to set an event aside.
        assert run.stats.batches == -(-len(spread) // size)
        states.append(readable_state(store, Keys("sr"), FeatureSettings(), now_ms / 1000))
    assert_same_state(states[0], states[1])
