"""The sharded commit on the 3-master Redis Cluster: a crash at any step leaves each shard
with the batch exactly once, after the next checkpoint read settles it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from msgspec import msgpack

from features.batch import WriteBatch
from features.errors import ConflictError, StoreUnavailableError
from features.keys import Keys
from features.sharding import ShardLayout
from features.stores.memory_store import InMemoryStore
from features.stores.redis_ops import encode_ops
from features.stores.redis_sharded import ShardedCommit
from features.stores.redis_store import RedisStore
from features.stores.sharded_store import ShardedStore, check_layout
from streams.worker.planner import read_checkpoint

pytestmark = pytest.mark.integration

SHARDS = 6


@pytest.fixture
def sharded(redis_cluster_store: RedisStore, namespace: str) -> Iterator[ShardedStore]:
    yield ShardedStore(redis_cluster_store, ShardLayout(namespace, SHARDS))


def batch_at(keys: Keys, offset: int, *, stored: int | None, rotate: bool = False) -> WriteBatch:
    """A worker's batch in miniature: counters over many items, per-user state, and the
    guarded checkpoint of partition 0 moving from ``stored`` to ``offset``."""
    batch = WriteBatch()
    offsets = keys.applied_offsets("t")
    batch.guard(offsets, "0", None if stored is None else str(stored))
    if rotate:
        batch.zscale(keys.trending(60.0), 0.5)
    for n in range(50):
        batch.zincrby(keys.trending(60.0), f"i{n}", float(n + offset))
        batch.zadd(keys.seen(f"u{n}"), {f"i{n}": float(offset)})
    batch.hset(offsets, {"0": str(offset)})
    return batch


def expected(keys: Keys, *batches: WriteBatch) -> dict[str, object]:
    memory = InMemoryStore()
    for batch in batches:
        memory.commit(batch)
    return memory.dump(keys.prefix)


class Crash(StoreUnavailableError):
    """The worker died here."""


def crash_after(monkeypatch: pytest.MonkeyPatch, method: str, calls: int) -> None:
    """Let ``calls`` calls of a ShardedCommit step through, then fail every one after."""
    real = getattr(ShardedCommit, method)
    seen = {"n": 0}

    def step(self: ShardedCommit, *args: Any) -> Any:
        seen["n"] += 1
        if seen["n"] > calls:
            raise Crash(f"killed in {method}")
        return real(self, *args)

    monkeypatch.setattr(ShardedCommit, method, step)


def crash_between_shards(monkeypatch: pytest.MonkeyPatch, applied: int) -> None:
    """Apply the first ``applied`` shares of the next batch, then die."""

    def partial(
        self: ShardedCommit, layout: ShardLayout, batch_id: str, keys: dict, marks: bytes
    ) -> None:  # type: ignore[type-arg]
        for shard, share_keys in list(keys.items())[:applied]:
            self._apply_share(layout, shard, batch_id, share_keys, marks)  # noqa: SLF001
        raise Crash("killed between shard commits")

    monkeypatch.setattr(ShardedCommit, "_apply_shares", partial)


def test_a_crash_between_shard_commits_is_finished_from_the_prepared_shares(
    sharded: ShardedStore, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(namespace)
    first = batch_at(keys, 10, stored=None)
    crash_between_shards(monkeypatch, applied=2)
    with pytest.raises(Crash):
        sharded.commit(first)
    monkeypatch.undo()
    assert sharded.dump(keys.prefix) != expected(keys, first)  # two shards of six hold it
    # The checkpoint already says applied: the stream will not send the batch again.
    offsets, _ = read_checkpoint(sharded, keys, ["t"])  # settles the pending batch
    assert offsets == {("t", 0): 10}
    assert sharded.dump(keys.prefix) == expected(keys, first)
    second = batch_at(keys, 20, stored=10)
    sharded.commit(second)
    assert sharded.dump(keys.prefix) == expected(keys, first, second)
    assert sharded.inner.hgetall(sharded.layout.pending_key()) == {}


def test_a_crash_before_the_decision_leaves_nothing_applied(
    sharded: ShardedStore, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(namespace)
    first = batch_at(keys, 10, stored=None)
    crash_after(monkeypatch, "_decide_when_free", calls=0)
    with pytest.raises(Crash):
        sharded.commit(first)
    monkeypatch.undo()
    assert read_checkpoint(sharded, keys, ["t"])[0] == {}
    assert sharded.dump(keys.prefix) == {}
    sharded.commit(first)  # the stream replays it
    assert sharded.dump(keys.prefix) == expected(keys, first)


def test_a_shard_that_holds_the_batch_skips_it_and_a_stale_batch_conflicts(
    sharded: ShardedStore, namespace: str
) -> None:
    keys = Keys(namespace)
    first = batch_at(keys, 10, stored=None)
    sharded.commit(first)
    layout = sharded.layout
    routed = layout.route(first)
    commit = ShardedCommit(sharded.inner._client, sharded.inner._call)  # noqa: SLF001
    marks = [x for pair in sorted(routed.marks.items()) for x in pair]
    # A zombie re-sending its share of a batch every shard holds: nothing changes.
    for shard, group in routed.shards.items():
        share_keys, _ = encode_ops(group, layout.to_stored)
        commit._apply_share(layout, shard, "gone", share_keys, msgpack.encode(marks))  # noqa: SLF001
    assert sharded.dump(keys.prefix) == expected(keys, first)
    with pytest.raises(ConflictError):
        sharded.commit(batch_at(keys, 20, stored=None))  # planned before the first landed
    assert sharded.dump(keys.prefix) == expected(keys, first)
    assert not [k for k in sharded.inner.dump("{" + namespace + "#") if ":prepared:" in k]


def test_a_landmark_move_waits_for_the_pending_batches(
    sharded: ShardedStore, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(namespace)
    first = batch_at(keys, 10, stored=None)
    crash_between_shards(monkeypatch, applied=1)
    with pytest.raises(Crash):
        sharded.commit(first)  # decided, one shard applied, then the worker died
    monkeypatch.undo()
    rotating = batch_at(keys, 20, stored=10, rotate=True)
    routed = sharded.layout.route(rotating)
    assert routed.rotates
    # Another worker's rotation finds the batch pending (BUSY), finishes it, then decides.
    sharded.inner.commit_sharded(routed, sharded.layout)
    assert sharded.dump(keys.prefix) == expected(keys, first, rotating)


def test_nodes_that_lost_their_scripts_still_answer_and_apply_every_share(
    sharded: ShardedStore, namespace: str
) -> None:
    keys = Keys(namespace)
    first = batch_at(keys, 10, stored=None)
    sharded.commit(first)
    sharded.inner._client.script_flush()  # noqa: SLF001 - as after a node restart
    # A read over every shard's part (one script per slot, pipelined) reloads the script.
    best = sharded.top(keys.trending(60.0), 3)
    assert best == [("i49", 59.0), ("i48", 58.0), ("i47", 57.0)]
    sharded.inner._client.script_flush()  # noqa: SLF001
    second = batch_at(keys, 20, stored=10)
    sharded.commit(second)
    assert sharded.dump(keys.prefix) == expected(keys, first, second)


def test_a_worker_refuses_a_store_written_in_other_shards(
    redis_cluster_store: RedisStore, redis_cluster_url: str, namespace: str
) -> None:
    check_layout(redis_cluster_store, ShardLayout(namespace, SHARDS), record=True)
    env = {
        **os.environ,
        "STREAMREC_REDIS_URL": redis_cluster_url,
        "STREAMREC_NAMESPACE": namespace,
        "STREAMREC_REDIS_SHARDS": "4",
    }
    result = subprocess.run(
        [sys.executable, "-m", "streamrec", "worker"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr.decode()[-2000:]
    said = " ".join((result.stdout + result.stderr).decode().split())
    assert f"stored in {SHARDS} shard(s)" in said and "STREAMREC_REDIS_SHARDS=6" in said, said
