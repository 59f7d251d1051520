"""The catalog gate: other topics are handed out only behind the items topic's end."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from streams.io.transport import RawMessage, TopicPartition
from streams.worker.catalog_gate import CatalogGate, catalog_behind

ITEMS, CLICKS = "items", "interactions"


class ScriptedLog:
    """A consumer over in-memory partition logs, with librdkafka's pause semantics: a paused
    partition hands out nothing, and resumes after the last message it handed out."""

    def __init__(self, logs: dict[TopicPartition, int], assigned: set[TopicPartition]) -> None:
        self.logs = {
            tp: [RawMessage(tp[0], tp[1], o, None, b"{}") for o in range(n)]
            for tp, n in logs.items()
        }
        self.position = dict.fromkeys(logs, 0)
        self.paused: set[TopicPartition] = set()
        self.assigned = assigned
        self.generation = 1
        #: Partitions whose messages the next poll hands out (None: all fetchable ones).
        self.fetch_only: set[TopicPartition] | None = None

    def append(self, tp: TopicPartition, n: int) -> None:
        log = self.logs[tp]
        log.extend(RawMessage(tp[0], tp[1], len(log) + i, None, b"{}") for i in range(n))

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[RawMessage]:
        out: list[RawMessage] = []
        for tp in sorted(self.assigned - self.paused):
            if self.fetch_only is not None and tp not in self.fetch_only:
                continue
            take = self.logs[tp][self.position[tp] : self.position[tp] + max_messages - len(out)]
            self.position[tp] += len(take)
            out.extend(take)
        return out

    def commit(self, next_offsets: Mapping[TopicPartition, int]) -> None:
        pass

    def lag(self) -> dict[TopicPartition, int]:
        return {tp: len(self.logs[tp]) - self.position[tp] for tp in self.assigned}

    def close(self) -> None:
        pass

    def committed(self, tps: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        return {}

    def rewind(self, tp: TopicPartition, offset: int | None) -> None:
        self.position[tp] = offset or 0

    def pause(self, tps: Collection[TopicPartition]) -> None:
        self.paused |= set(tps)

    def resume(self, tps: Collection[TopicPartition]) -> None:
        self.paused -= set(tps)

    def high_watermarks(self, topic: str) -> dict[int, int]:
        return {p: len(log) for (t, p), log in self.logs.items() if t == topic}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.1  # every look at the clock moves it past the gate's check interval
        return self.now


def gate_over(
    source: ScriptedLog, stored: dict[int, int] | None = None, max_wait_s: float = 60.0
) -> CatalogGate:
    return CatalogGate(
        source,
        items_topic=ITEMS,
        stored_items=lambda: dict(stored or {}),
        max_wait_s=max_wait_s,
        clock=Clock(),
    )


def drain(gate: CatalogGate, polls: int = 50, size: int = 4) -> list[RawMessage]:
    out: list[RawMessage] = []
    for _ in range(polls):
        out.extend(gate.poll_batch(size, 0.0))
    return out


def test_catalog_behind_names_each_partition_short_of_its_end() -> None:
    assert catalog_behind({0: 3, 1: 0}, {}) == {0: 2}
    assert catalog_behind({0: 3}, {0: 2}) == {}


def test_interactions_fetched_before_the_items_backlog_wait_for_it() -> None:
    source = ScriptedLog(
        {(ITEMS, 0): 6, (CLICKS, 0): 5, (CLICKS, 1): 5}, {(ITEMS, 0), (CLICKS, 0), (CLICKS, 1)}
    )
    source.fetch_only = {(CLICKS, 0), (CLICKS, 1)}  # the interactions' fetch comes back first
    gate = gate_over(source)
    assert gate.poll_batch(4, 0.0) == []  # held: the catalog has 6 records nobody applied
    assert gate.stats.holds == 1 and gate.stats.waiting == 4
    source.fetch_only = None
    out = drain(gate)
    kinds = [m.topic for m in out]
    # Every item before any interaction; every interaction once, in offset order.
    assert kinds == [ITEMS] * 6 + [CLICKS] * 10
    for p in (0, 1):
        assert [m.offset for m in out if m.topic == CLICKS and m.partition == p] == list(range(5))
    assert gate.stats.waiting == 0 and not source.paused


def test_a_caught_up_catalog_holds_nothing_back() -> None:
    source = ScriptedLog({(ITEMS, 0): 2, (CLICKS, 0): 3}, {(ITEMS, 0), (CLICKS, 0)})
    gate = gate_over(source)
    first = gate.poll_batch(10, 0.0)
    assert [m.topic for m in first] == [CLICKS] * 3 + [ITEMS] * 2  # the batch's items count
    source.append((CLICKS, 0), 2)
    assert len(gate.poll_batch(10, 0.0)) == 2
    assert gate.stats.holds == 0


def test_items_another_worker_applies_are_waited_for_through_the_store() -> None:
    source = ScriptedLog({(ITEMS, 0): 0, (ITEMS, 1): 4, (CLICKS, 0): 3}, {(ITEMS, 0), (CLICKS, 0)})
    stored: dict[int, int] = {}
    gate = gate_over(source, stored)
    assert drain(gate, polls=3) == []
    stored[1] = 3  # the other worker committed its items
    assert [m.offset for m in drain(gate, polls=3)] == [0, 1, 2]


def test_a_catalog_nobody_applies_stops_the_wait_after_max_wait() -> None:
    source = ScriptedLog({(ITEMS, 1): 4, (CLICKS, 0): 3}, {(CLICKS, 0)})
    gate = gate_over(source, max_wait_s=1.0)
    out = drain(gate, polls=30)
    assert [m.offset for m in out] == [0, 1, 2]
    assert gate.stats.timeouts == 1


def test_rewinding_an_items_partition_puts_the_others_behind_it_again() -> None:
    source = ScriptedLog({(ITEMS, 0): 3, (CLICKS, 0): 2}, {(ITEMS, 0), (CLICKS, 0)})
    gate = gate_over(source)
    assert len(drain(gate)) == 5
    gate.rewind((ITEMS, 0), None)  # the store lost the catalog
    source.append((CLICKS, 0), 2)
    source.fetch_only = {(CLICKS, 0)}
    assert gate.poll_batch(10, 0.0) == []
    source.fetch_only = None
    assert [m.topic for m in drain(gate)] == [ITEMS] * 3 + [CLICKS] * 2


def test_waiting_messages_of_a_revoked_partition_are_left_to_its_new_owner() -> None:
    source = ScriptedLog({(ITEMS, 0): 3, (CLICKS, 0): 2}, {(ITEMS, 0), (CLICKS, 0)})
    source.fetch_only = {(CLICKS, 0)}
    gate = gate_over(source)
    assert gate.poll_batch(10, 0.0) == [] and gate.stats.waiting == 2
    source.assigned = {(ITEMS, 0)}
    source.generation += 1
    source.fetch_only = None
    assert [m.topic for m in drain(gate)] == [ITEMS] * 3
    assert gate.pending == [] and gate.lag() == {(ITEMS, 0): 0}
