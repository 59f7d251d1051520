"""Learned item embeddings end to end on the in-memory store: an id-only stream → refresher →
item upserts → worker and ANN replica → session embeddings and ANN retrieval."""

from __future__ import annotations

import threading
from functools import cache

import numpy as np

from features.catalog import Catalog
from features.covisitation import Covisitation
from features.embeddings import EmbeddingState, vector
from features.keys import Keys
from features.settings import FeatureSettings, LearningSettings
from features.store import Store
from streamrec.demo import EmbeddedSystem
from streamrec.settings import Settings
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.io.bus import InProcessBus
from streams.io.replica import IndexReplica
from streams.schema import EventValidator, Interaction, Item, encode
from streams.settings import TopicSettings
from streams.worker.embedding_refresh import EmbeddingRefresher, follow, stream_time_ms
from streams.worker.pipeline import run_pipeline
from streams.worker.runtime import Worker
from tests.reads import neighbours

DIM = 16
KEYS = Keys("sr")
FEATURES = FeatureSettings(embedding_dim=DIM)
LEARNING = LearningSettings()  # every 300 s of event time, 3 neighbours, cosine 0.99
TOPICS = TopicSettings()
START_MS = 1_700_000_000_000


@cache
def simulator_stream() -> tuple[StreamSimulator, tuple[Interaction, ...], tuple[Interaction, ...]]:
    """A seeded stream without any item event (ids only, as MovieLens has): the simulator
    (only to look up items' categories), about 4000 s of events, and the next 200 s."""
    sim = StreamSimulator(
        SimulatorConfig(
            users=300, items=300, embedding_dim=DIM, interval_s=0.5, concurrent_sessions=30
        ),
        seed=3,
    )
    events = [e for e in sim.events(8400, start_ms=START_MS) if isinstance(e, Interaction)]
    cut = next(n for n, e in enumerate(events) if e.ts > START_MS + 4_000_000)
    return sim, tuple(events[:cut]), tuple(events[cut:])


def drain(worker: Worker) -> None:
    while any(worker.source.lag().values()):
        worker.run_once()


def send(bus: InProcessBus, worker: Worker, events: list[Item] | list[Interaction]) -> None:
    for event in events:
        bus.send(event)
    drain(worker)


def stored_vectors(store: Store, items: list[str]) -> dict[str, np.ndarray]:
    raws = store.get_bytes([KEYS.item_embedding(i) for i in items])
    return {i: np.frombuffer(r, np.float32) for i, r in zip(items, raws, strict=True) if r}


def replica(bus: InProcessBus) -> IndexReplica:
    """The serving replica (HNSW), applied synchronously from the items topic."""
    r = IndexReplica(
        topic=TOPICS.items,
        dim=DIM,
        source_factory=lambda start: bus.tail_source(TOPICS.items, start),
        validator=EventValidator(embedding_dim=DIM, max_payload_bytes=65536, max_future_ms=0),
    )
    r.apply(bus.read(TOPICS.items))
    return r


def session_vector(store: Store, user: str) -> np.ndarray | None:
    raw = store.get_bytes([KEYS.session_embedding(user)])[0]
    return vector(EmbeddingState.from_bytes(raw, DIM)) if raw is not None else None


def test_an_id_only_stream_gets_embeddings_that_sessions_and_the_replica_use() -> None:
    sim, events, more = simulator_stream()
    now_ms = events[-1].ts
    store, worker, bus = run_pipeline(events, features=FEATURES, learning=LEARNING)
    items = sorted({e.item_id for e in events})
    users = sorted({e.user_id for e in events})
    assert stored_vectors(store, items) == {}
    assert all(session_vector(store, u) is None for u in users)

    refresher = EmbeddingRefresher(store, KEYS, FEATURES, LEARNING)
    upserts = refresher.maybe_refresh(now_ms)
    assert len(upserts) > 0.9 * len(items)
    assert all(u.embedding_learned and u.ts == now_ms for u in upserts)
    send(bus, worker, upserts)

    # (i) the worker stored them.
    assert set(stored_vectors(store, items)) == {u.item_id for u in upserts}
    # (ii) more interactions give sessions an embedding.
    send(bus, worker, list(more))
    active = sorted({e.user_id for e in more if e.type not in ("skip", "dismiss")})
    assert sum(session_vector(store, u) is not None for u in active) > 0.9 * len(active)

    # (iii) the replica indexed them, and an item's nearest items are what it is co-visited
    # with, of its own category.
    index = replica(bus).index
    assert len(index) == len(upserts)
    covisitation = Covisitation(KEYS)
    in_neighbours, same_category = [], []
    for item in [u.item_id for u in upserts[:100]]:
        hits = [i for i, _ in index.query(index.vectors([item])[0], 10, exclude={item})]
        found = {i for i, _ in neighbours(covisitation, store, item, 100, now_ms / 1000)}
        in_neighbours.append(len(set(hits) & found) / len(hits))
        category = sim._item_category[sim._index[item]]
        same_category += [sim._item_category[sim._index[h]] == category for h in hits]
    # 12 categories: a tenth would be chance.
    assert np.mean(in_neighbours) > 0.3 and np.mean(same_category) > 0.45


def test_upserts_keep_the_catalog_record_and_content_vectors_win() -> None:
    _, events, _ = simulator_stream()
    items = sorted({e.item_id for e in events})
    known, own, tagged, hidden = items[:5], items[5], items[6], items[7]
    t0 = events[0].ts
    catalog = [
        *(Item(item_id=i, ts=t0, category="news", creator=f"c-{i}", created_at=12) for i in known),
        Item(item_id=own, ts=t0, category="own", embedding=[1.0] + [0.0] * (DIM - 1)),
        Item(item_id=tagged, ts=t0, category="tagged", tags=["x"]),  # a content (hash) vector
        Item(item_id=hidden, ts=t0, category="gone", available=False),
    ]
    store, worker, bus = run_pipeline([*catalog, *events], features=FEATURES, learning=LEARNING)
    records = Catalog(KEYS)
    before = dict(zip(items, records.records(store, items), strict=True))
    own_vector = stored_vectors(store, [own])[own].copy()

    refresher = EmbeddingRefresher(store, KEYS, FEATURES, LEARNING)
    by_id = {u.item_id: u for u in refresher.refresh(events[-1].ts)}
    assert not {own, tagged, hidden} & set(by_id)
    assert [(by_id[i].category, by_id[i].creator, by_id[i].created_at) for i in known] == [
        ("news", f"c-{i}", 12) for i in known
    ]
    # An item only ever seen in interactions keeps its stub's creation time.
    stub, stub_meta = items[8], before[items[8]]
    assert stub_meta is not None and not stub_meta.category
    assert by_id[stub].category is None and by_id[stub].created_at == stub_meta.created_at_ms

    send(bus, worker, list(by_id.values()))
    assert dict(zip(items, records.records(store, items), strict=True)) == before
    np.testing.assert_array_equal(stored_vectors(store, [own])[own], own_vector)
    sources = {
        i: s for i, (_, s) in zip(items, records.records_and_vectors(store, items), strict=True)
    }
    assert sources[own] == sources[tagged] == "content" and sources[known[0]] == "learned"

    # A content embedding that arrives later takes over from the learned one, and stays.
    content = [0.0, 1.0] + [0.0] * (DIM - 2)
    send(bus, worker, [Item(item_id=known[0], ts=events[-1].ts, embedding=content)])
    assert known[0] not in {u.item_id for u in refresher.refresh(events[-1].ts + 1)}
    assert stored_vectors(store, [known[0]])[known[0]].tolist() == content


def test_later_refreshes_publish_few_upserts_in_the_same_frame() -> None:
    _, events, more = simulator_stream()
    store, worker, bus = run_pipeline(events, features=FEATURES, learning=LEARNING)
    refresher = EmbeddingRefresher(store, KEYS, FEATURES, LEARNING)
    now_ms = events[-1].ts
    first = refresher.maybe_refresh(now_ms)
    send(bus, worker, first)
    assert refresher.maybe_refresh(now_ms + 299_000) == []  # not due yet
    send(bus, worker, list(more[:100]))
    second = refresher.maybe_refresh(now_ms + 300_000)
    assert 0 < len(second) < 0.5 * len(first)
    # The items that moved did so within one frame: the sessions built on the first vectors
    # still point near what they held.
    old = {u.item_id: np.asarray(u.embedding) for u in first}
    cosines = [float(np.asarray(u.embedding) @ old[u.item_id]) for u in second if u.item_id in old]
    assert np.median(cosines) > 0.8

    # A restarted refresher starts from the learned vectors in the store, in their frame:
    # on the same state it has next to nothing to publish.
    send(bus, worker, second)
    restarted = EmbeddingRefresher(store, KEYS, FEATURES, LEARNING)
    assert len(restarted.refresh(now_ms + 300_000)) < 0.05 * len(first)


def test_same_stream_same_upserts_and_zero_turns_it_off() -> None:
    _, events, _ = simulator_stream()

    def upserts() -> list[bytes]:
        store, _, _ = run_pipeline(events, features=FEATURES, learning=LEARNING)
        return [
            encode(u)
            for u in EmbeddingRefresher(store, KEYS, FEATURES, LEARNING).maybe_refresh(
                events[-1].ts
            )
        ]

    assert upserts() == upserts()
    store, _, _ = run_pipeline(events[:50], features=FEATURES, learning=LEARNING)
    off = LEARNING.model_copy(update={"embedding_refresh_s": 0.0})
    assert EmbeddingRefresher(store, KEYS, FEATURES, off).maybe_refresh(events[-1].ts) == []


def test_nothing_until_items_have_enough_neighbours() -> None:
    events = [
        Interaction(event_id=f"e{n}", user_id="u", item_id=f"i{n}", type="view", ts=START_MS + n)
        for n in range(3)
    ]
    store, _, _ = run_pipeline(events, features=FEATURES, learning=LEARNING)
    refresher = EmbeddingRefresher(store, KEYS, FEATURES, LEARNING)
    # i0–i2 have two neighbours each, one short of embedding_min_neighbours.
    assert refresher.maybe_refresh(START_MS + 10) == []
    assert refresher.stats.refreshes == 1 and refresher.stats.last_embedded == 0


def neighbour_count(store: Store, item: str, items: list[str], now_ms: int) -> int:
    """Distinct items ``item`` is co-visited with, either way round (what min_count counts)."""
    rows = Covisitation(KEYS).neighbours_many(store, items, 100, now_ms / 1000)
    found = dict(zip(items, rows, strict=True))
    return len({i for i, _ in found[item]} | {i for i in items if item in dict(found[i])})


def test_a_new_item_is_embedded_within_a_refresh_of_getting_its_neighbours() -> None:
    # 40 users view 60 items, one event every 2 s; from 1 h on, every 25th view is "fresh".
    rng = np.random.default_rng(0)
    events = [
        Interaction(
            event_id=f"e{n}",
            user_id=f"u{n % 40}",
            item_id="fresh" if n >= 1800 and n % 25 == 0 else f"i{int(rng.integers(60))}",
            type="view",
            ts=START_MS + n * 2_000,
        )
        for n in range(3000)
    ]
    items = ["fresh", *(f"i{k}" for k in range(60))]
    store, worker, bus = run_pipeline([], features=FEATURES, learning=LEARNING)
    refresher = EmbeddingRefresher(store, KEYS, FEATURES, LEARNING)
    seen_ms = ready_ms = embedded_ms = None
    for start in range(0, len(events), 25):  # batches of 50 s; a refresh check after each
        batch = events[start : start + 25]
        send(bus, worker, batch)
        now_ms = batch[-1].ts
        if seen_ms is None and any(e.item_id == "fresh" for e in batch):
            seen_ms = now_ms
        if seen_ms is not None and ready_ms is None:
            if neighbour_count(store, "fresh", items, now_ms) >= LEARNING.embedding_min_neighbours:
                ready_ms = now_ms
        upserts = refresher.maybe_refresh(now_ms)
        send(bus, worker, upserts)
        if any(u.item_id == "fresh" for u in upserts):
            embedded_ms = now_ms
            break
    assert seen_ms is not None and ready_ms is not None and embedded_ms is not None
    # At most one refresh period after it has its neighbours (and never before).
    assert ready_ms <= embedded_ms <= ready_ms + LEARNING.embedding_refresh_s * 1000


def test_follow_publishes_each_refresh_to_the_items_topic() -> None:
    _, events, _ = simulator_stream()
    store, _, bus = run_pipeline(events, features=FEATURES, learning=LEARNING)
    refresher = EmbeddingRefresher(store, KEYS, FEATURES, LEARNING)
    follow(
        refresher,
        bus,
        threading.Event(),
        every_s=60.0,
        clock=lambda: events[-1].ts / 1000,
        once=True,
    )
    published = bus.read(TOPICS.items)
    assert len(published) == refresher.stats.published > 0
    assert stream_time_ms(store, KEYS, TOPICS.interactions) == events[-1].ts


def test_the_embedded_demo_publishes_learned_embeddings_between_batches() -> None:
    settings = Settings(features=FEATURES, learning=LearningSettings(embedding_refresh_s=60.0))
    system = EmbeddedSystem(settings, seed=1, feeds_per_s=0.0)  # no thread started
    _, events, _ = simulator_stream()
    for event in events:
        system.bus.send(event)
    sent = 0
    while any(system.worker.source.lag().values()):
        if system.worker.run_once():
            sent += system.refresh_embeddings()  # what the demo's worker thread does
    published = [m.key.decode() for m in system.bus.read(settings.topics.items) if m.key]
    assert sent > 0 and len(published) == sent
    drain(system.worker)
    assert set(stored_vectors(system.store, published)) == set(published)


def test_a_learned_upsert_changes_only_the_vector_of_a_stub() -> None:
    """Items known only from interactions stay stubs, out of the fresh-items index: a
    learned vector does not make them new catalog items."""
    _, events, _ = simulator_stream()
    store, worker, bus = run_pipeline(events, features=FEATURES, learning=LEARNING)
    items = sorted({e.item_id for e in events})
    before = {i: store.hgetall(KEYS.item(i)) for i in items}
    upserts = EmbeddingRefresher(store, KEYS, FEATURES, LEARNING).refresh(events[-1].ts)
    assert upserts
    send(bus, worker, upserts)
    for item in (u.item_id for u in upserts):
        after = store.hgetall(KEYS.item(item))
        assert after == {**before[item], "vector": "learned"}
        assert after["stub"] == "1"
    assert store.zscores(KEYS.items_by_time(), items) == [None] * len(items)


def test_a_replay_refresh_also_waits_for_enough_new_interactions() -> None:
    _, events, _ = simulator_stream()
    store, _, _ = run_pipeline(events, features=FEATURES, learning=LEARNING)
    gated = LEARNING.model_copy(update={"embedding_refresh_min_events": 500})
    refresher = EmbeddingRefresher(store, KEYS, FEATURES, gated)
    now_ms = events[-1].ts
    assert refresher.maybe_refresh(now_ms, events=1000)  # the first is at once
    assert refresher.maybe_refresh(now_ms + 10**9, events=1499) == []  # time, not events
    assert refresher.stats.refreshes == 1
    refresher.maybe_refresh(now_ms + 10**9, events=1500)
    assert refresher.stats.refreshes == 2
