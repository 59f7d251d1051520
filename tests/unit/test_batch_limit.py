"""The worker's batch limit: commits near the target while it keeps up, throughput first
while its backlog grows."""

from __future__ import annotations

import time

from features.batch import WriteBatch
from features.stores.memory_store import InMemoryStore
from streamrec.settings import Settings
from streamrec.wiring import build_worker
from streams.io.bus import InProcessBus
from streams.schema import Interaction
from streams.worker.batch_limit import MAX_PRESSURE, BatchLimit


def commits_at(per_event_ms: float, fixed_ms: float = 0.0):  # type: ignore[no-untyped-def]
    return lambda events: fixed_ms + per_event_ms * events


def test_the_limit_settles_where_a_commit_takes_the_target() -> None:
    limit, cost = BatchLimit(largest=5000, target_ms=20.0), commits_at(0.05)
    for _ in range(20):
        limit.observe(events=limit.current, commit_ms=cost(limit.current))
    assert limit.current == 400
    assert cost(limit.current) == 20.0


def test_one_slow_commit_moves_the_limit_by_half_at_most() -> None:
    limit = BatchLimit(largest=5000, target_ms=20.0, current=1000)
    assert limit.observe(events=1000, commit_ms=10_000.0) == 500
    assert limit.observe(events=500, commit_ms=0.001) == 1000


def test_partial_batches_never_grow_it_and_it_stays_within_bounds() -> None:
    limit = BatchLimit(largest=5000, target_ms=20.0, current=400)
    assert limit.observe(events=10, commit_ms=0.5) == 400  # the stream was just slow
    for _ in range(20):
        limit.observe(events=limit.current, commit_ms=1e6)
    assert limit.current == limit.smallest == 100
    for _ in range(20):
        limit.observe(events=limit.current, commit_ms=0.0)
    assert limit.current == 5000


def test_a_growing_backlog_buys_longer_commits_until_caught_up() -> None:
    limit, cost = BatchLimit(largest=5000, target_ms=20.0), commits_at(0.05)
    for _ in range(10):
        limit.observe(events=limit.current, commit_ms=cost(limit.current))
    assert limit.current == 400
    backlog = 10_000
    for _ in range(3):  # behind and falling further behind: pressure 2, 4, 8
        backlog += 5_000
        limit.observe_backlog(backlog)
        for _ in range(5):
            limit.observe(events=limit.current, commit_ms=cost(limit.current))
    assert limit.pressure == 8.0 and limit.current == 3200
    limit.observe_backlog(backlog - 1_000)  # catching up: pressure holds
    assert limit.pressure == 8.0
    for _ in range(10):  # caught up: back to the target
        limit.observe_backlog(0)
        limit.observe(events=limit.current, commit_ms=cost(limit.current))
    assert limit.pressure == 1.0 and limit.current == 400
    for _ in range(20):
        limit.observe_backlog(10**9 + limit.pressure)
    assert limit.pressure == MAX_PRESSURE


class SlowStore(InMemoryStore):
    """Commits take 0.2 ms per queued op: big batches are slow."""

    def commit(self, batch: WriteBatch) -> None:
        time.sleep(0.0002 * len(batch))
        super().commit(batch)


def test_a_worker_with_a_commit_target_takes_smaller_batches() -> None:
    settings = Settings()
    bus = InProcessBus(partitions=1, topics=settings.topics)
    now = int(time.time() * 1000)

    def send(first: int, count: int) -> None:
        for n in range(first, first + count):
            user, item = f"u{n % 300}", f"i{n % 500}"
            bus.send(Interaction(event_id=f"e{n}", user_id=user, item_id=item, type="view", ts=now))

    source = bus.source(settings.topics.worker_inputs, settings.worker.group_id)
    worker = build_worker(settings, source, SlowStore(), bus, commit_target_ms=5.0)
    send(0, 3000)
    assert worker.run_once() == 3000  # starts at batch_size: the first commit is long
    assert worker.batch_limit.current == 2500  # halved, not more
    send(3000, 6000)
    sizes = []
    while worker.stats.applied < 9000 and len(sizes) < 200:
        sizes.append(worker.run_once())
    assert worker.stats.applied == 9000 and worker.stats.dead_lettered == 0
    assert sizes[0] == 2500 and max(sizes[1:]) <= 1250 and sizes[-2] < 400, sizes

    fixed = build_worker(settings, source, InMemoryStore(), bus)
    assert fixed.batch_limit.current == settings.worker.batch_size
    assert fixed.batch_limit.observe(events=5000, commit_ms=10_000.0) == 5000
