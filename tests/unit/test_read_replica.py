"""Reads from a Redis read replica: the lag window, the routing and the probe thread (pure;
the real replica is in tests/integration/test_read_replica.py)."""

from __future__ import annotations

import threading

import pytest

from features.batch import WriteBatch
from features.errors import StoreUnavailableError
from features.stores.memory_store import InMemoryStore
from features.stores.replica import ReplicaProbe, ReplicaReadStore, ReplicationLag


class _Down(InMemoryStore):
    """A replica that has gone away."""

    def top(self, key: str, k: int) -> list[tuple[str, float]]:
        raise StoreUnavailableError("replica unreachable")

    def ping(self) -> bool:
        return False


def _stores() -> tuple[InMemoryStore, InMemoryStore]:
    primary, replica = InMemoryStore(), InMemoryStore()
    for store, member in ((primary, "on-primary"), (replica, "on-replica")):
        batch = WriteBatch()
        batch.zadd("k", {member: 1.0})
        store.commit(batch)
    return primary, replica


def test_lag_quantiles_and_freshness_follow_the_samples() -> None:
    lag = ReplicationLag(max_lag_ms=50.0, window=100)
    for ms in range(1, 101):
        lag.record(float(ms) / 4)  # 0.25 .. 25 ms
    summary = lag.summary()
    assert (summary["p50_ms"], summary["p99_ms"], summary["samples"]) == (12.5, 24.75, 100)
    assert lag.fresh and summary["reading"] == "replica"
    lag.record(51.0)  # one probe past the bound is enough to read the primary
    assert not lag.fresh and lag.summary()["reading"] == "primary"
    lag.record(3.0)
    assert lag.fresh


def test_reads_go_to_the_replica_only_while_it_keeps_up_and_writes_never() -> None:
    primary, replica = _stores()
    lag = ReplicationLag(max_lag_ms=100.0)
    store = ReplicaReadStore(primary, replica, lag)
    assert store.top("k", 5) == [("on-primary", 1.0)]  # nothing measured yet
    lag.record(2.0)
    assert store.top("k", 5) == [("on-replica", 1.0)]
    assert store.top_many(["k"], 5) == [[("on-replica", 1.0)]]
    lag.record(None)  # no replica acknowledged the probe
    assert store.top("k", 5) == [("on-primary", 1.0)]

    lag.record(2.0)
    batch = WriteBatch()
    batch.zadd("written", {"x": 1.0})
    store.commit(batch)
    assert primary.zcard("written") == 1 and replica.zcard("written") == 0


def test_a_failed_replica_read_is_answered_by_the_primary_and_counted() -> None:
    primary, _ = _stores()
    lag = ReplicationLag(max_lag_ms=100.0)
    lag.record(1.0)
    store = ReplicaReadStore(primary, _Down(), lag)
    assert store.top("k", 5) == [("on-primary", 1.0)]
    summary = lag.summary()
    assert summary["failed_reads"] == 1 and summary["reading"] == "primary"
    assert store.ping()  # the primary answers for it


def test_the_probe_records_samples_and_skips_an_unreachable_primary() -> None:
    lag = ReplicationLag(max_lag_ms=100.0)
    answers: list[float | None | Exception] = [
        StoreUnavailableError("primary down"),
        4.0,
        None,
        2.0,
    ]
    done = threading.Event()

    def measure() -> float | None:
        if not answers:
            done.set()
            return 2.0
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    probe = ReplicaProbe(measure, lag, interval_s=0.001)
    probe.start()
    assert done.wait(5.0)
    probe.stop()
    summary = lag.summary()
    assert summary["unacknowledged"] == 1  # the None; the outage recorded nothing
    assert summary["samples"] >= 3 and lag.fresh


@pytest.mark.parametrize("bound", [0.5, 10.0])
def test_freshness_is_judged_against_the_configured_bound(bound: float) -> None:
    lag = ReplicationLag(max_lag_ms=bound)
    lag.record(1.0)
    assert lag.fresh is (1.0 <= bound)
