"""The serving process's ANN replica: follows item events, snapshots, restarts from the tail."""

from __future__ import annotations

import time
from pathlib import Path

from features.ann import BruteForceIndex
from streams.io.bus import InProcessBus
from streams.io.replica import IndexReplica
from streams.schema import EventValidator, Item
from streams.settings import TopicSettings

TOPIC = TopicSettings().items
DIM = 8


def replica(bus: InProcessBus, snapshots: Path | None = None) -> IndexReplica:
    return IndexReplica(
        topic=TOPIC,
        dim=DIM,
        source_factory=lambda start: bus.tail_source(TOPIC, start),
        validator=EventValidator(embedding_dim=DIM, max_payload_bytes=65536, max_future_ms=10**12),
        snapshot_dir=snapshots,
        index_factory=lambda: BruteForceIndex(DIM),
    )


def vec(i: int) -> list[float]:
    return [1.0 if j == i % DIM else 0.1 for j in range(DIM)]


def wait(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_new_items_become_retrievable_and_deleted_ones_leave(tmp_path: Path) -> None:
    bus = InProcessBus(partitions=2)
    for i in range(20):
        bus.send(Item(item_id=f"i{i}", ts=0, embedding=vec(i)))
    r = replica(bus)
    r.start()
    try:
        assert r.ready.wait(5)
        assert len(r.index) == 20
        bus.send(Item(item_id="fresh", ts=1, category="news", tags=["x"]))  # content embedding
        wait(lambda: "fresh" in r.index)
        bus.send(Item(item_id="i3", ts=2, op="delete"))
        bus.send(Item(item_id="i4", ts=2, embedding=vec(4), available=False))
        wait(lambda: "i3" not in r.index and "i4" not in r.index)
        assert "i3" not in {i for i, _ in r.index.query(vec(3), 20)}
        bus.send_raw(TOPIC, b"bad", b"{not json", {})
        bus.send(Item(item_id="after-bad", ts=3, embedding=vec(5)))
        wait(lambda: "after-bad" in r.index)
        assert r.status()["skipped"] == 1
    finally:
        r.stop()


def test_a_restart_loads_the_snapshot_and_replays_only_the_tail(tmp_path: Path) -> None:
    bus = InProcessBus(partitions=2)
    for i in range(30):
        bus.send(Item(item_id=f"i{i}", ts=0, embedding=vec(i)))
    first = replica(bus, tmp_path)
    first.start()
    assert first.ready.wait(5)
    first.stop()  # writes a snapshot covering all 30
    bus.send(Item(item_id="tail", ts=1, embedding=vec(1)))
    second = replica(bus, tmp_path)
    second.start()
    try:
        assert second.ready.wait(5)
        assert second.restored_from is not None
        assert len(second.index) == 31
        assert second.applied == 1  # only the tail was read from the topic
    finally:
        second.stop()
