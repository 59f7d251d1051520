"""The worker runtime: poll a batch, decode, skip what is applied, apply, commit.

Checkpoint order, fixed and documented:
1. read each partition's stored offset and watermark, and decode only what is past them;
2. dead-letter the batch's rejects and flush them (a reject is never lost);
3. commit the state writes with each partition's new offset and watermark in one atomic
   store call, guarded by the offsets read in 1 (and the decay landmarks the processors used);
4. commit the consumer offsets.

A crash between 3 and 4 replays events the offset table then skips; a retried commit whose
first attempt landed fails its guard and the batch is re-filtered. Effects are exactly once
although delivery is at least once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import orjson

from features.batch import WriteBatch
from features.errors import ConflictError, InvalidEventError, StoreUnavailableError
from features.keys import Keys
from features.store import Store
from streams.dead_letter import DeadLetterPolicy
from streams.processors import BatchReads, EventBatch, Processor
from streams.schema import EventValidator, Impression, Interaction, Item
from streams.settings import TopicSettings, WorkerSettings
from streams.transport import MessageSource, RawMessage, TopicPartition

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Stopped(Exception):
    """The worker was told to stop while waiting for the store."""


@dataclass
class WorkerStats:
    """Counters a worker reports in its heartbeat."""

    applied: int = 0
    skipped_duplicates: int = 0
    conflicts: int = 0
    dead_lettered: int = 0
    batches: int = 0
    last_batch_ms: float = 0.0
    started_at: float = field(default_factory=time.time)
    #: Applied events by kind: interaction types, "item", "impression" (for events/s by type).
    by_type: Counter[str] = field(default_factory=Counter)
    #: Event time to applied, in ms, of recent events (sampled; cleared by each heartbeat).
    freshness_ms: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    #: Messages behind per "topic/partition", as of the last heartbeat.
    lag: dict[str, int] = field(default_factory=dict)


class Backoff:
    """Exponential backoff from ``first_s`` to ``max_s``.

    Examples:
        >>> b = Backoff(0.1, 0.5)
        >>> [b.next() for _ in range(4)]
        [0.1, 0.2, 0.4, 0.5]
    """

    def __init__(self, first_s: float = 0.1, max_s: float = 5.0) -> None:
        self.first_s, self.max_s, self._current = first_s, max_s, first_s

    def next(self) -> float:
        """The next wait, doubling up to the cap."""
        wait = self._current
        self._current = min(self._current * 2, self.max_s)
        return wait

    def reset(self) -> None:
        """Start from the first wait again."""
        self._current = self.first_s


class Worker:
    """Applies event batches from a message source to the store through the processors."""

    def __init__(
        self,
        *,
        source: MessageSource,
        store: Store,
        keys: Keys,
        processors: Sequence[Processor],
        validator: EventValidator,
        dead_letter: DeadLetterPolicy,
        topics: TopicSettings,
        settings: WorkerSettings,
        worker_id: str | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.source = source
        self.store = store
        self.keys = keys
        self.processors = list(processors)
        self.validator = validator
        self.dead_letter = dead_letter
        self.topics = topics
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.clock = clock or time.time
        self.stats = WorkerStats()
        self._kinds: dict[str, type[Any]] = {
            topics.interactions: Interaction,
            topics.items: Item,
            topics.impressions: Impression,
        }
        self._last_heartbeat = 0.0
        self._store_down = False

    def run(self, stop: threading.Event) -> None:
        """Process batches until ``stop`` is set, then leave the group."""
        log.info("worker %s started", self.worker_id)
        try:
            while not stop.is_set():
                self.run_once(stop)
        finally:
            self.source.close()
            log.info("worker %s stopped: %s", self.worker_id, self.stats)

    def run_once(self, stop: threading.Event | None = None) -> int:
        """Poll and apply one batch; return how many events it applied."""
        messages = self.source.poll_batch(
            self.settings.batch_size, self.settings.batch_timeout_ms / 1000.0
        )
        applied = self.apply_messages(messages, stop) if messages else 0
        self._maybe_heartbeat()
        return applied

    def apply_messages(
        self, messages: list[RawMessage], stop: threading.Event | None = None
    ) -> int:
        """Apply one batch (also the entry point for push-based runtimes); return events applied."""
        try:
            return self._apply(messages, stop)
        except _Stopped:
            return 0  # nothing was committed; the batch is consumed again after restart

    def _apply(self, messages: list[RawMessage], stop: threading.Event | None) -> int:
        started = time.perf_counter()
        topics = sorted({m.topic for m in messages})
        last: dict[TopicPartition, int] = {}
        for msg in messages:
            tp = (msg.topic, msg.partition)
            last[tp] = max(msg.offset, last.get(tp, -1))
        rejected: set[tuple[TopicPartition, int]] = set()
        while True:
            applied_offsets, watermarks = self._with_store(
                lambda: self._read_checkpoint(topics), stop
            )
            events = self._fresh_events(messages, applied_offsets, watermarks, rejected)
            self.dead_letter.flush()
            try:
                commit = partial(
                    self._compute_and_commit, events, last, applied_offsets, watermarks
                )
                self._with_store(commit, stop)
                break
            except ConflictError as exc:
                # A shared landmark moved, or the offsets moved (another worker took over the
                # partition, or a commit whose reply was lost did land): start again from the
                # stored checkpoint, so nothing is applied twice.
                self.stats.conflicts += 1
                log.info("batch conflicted (%s); recomputing from the stored checkpoint", exc)
        self.source.commit({tp: offset + 1 for tp, offset in last.items()})
        self._account(events)
        self.stats.batches += 1
        self.stats.last_batch_ms = (time.perf_counter() - started) * 1000.0
        return len(events)

    def _fresh_events(
        self,
        messages: list[RawMessage],
        applied_offsets: dict[TopicPartition, int],
        watermarks: dict[TopicPartition, int],
        rejected: set[tuple[TopicPartition, int]],
    ) -> EventBatch:
        """Decode the messages the store has not applied; reject each bad one only once."""
        events = EventBatch()
        now_ms = int(self.clock() * 1000)
        for msg in messages:
            tp = (msg.topic, msg.partition)
            if msg.offset <= applied_offsets.get(tp, -1):
                self.stats.skipped_duplicates += 1
                continue
            if (tp, msg.offset) in rejected:
                continue
            if not self._decode_into(events, msg, now_ms, watermarks):
                rejected.add((tp, msg.offset))
        for topic, partition in {(m.topic, m.partition) for m in messages}:
            if topic == self.topics.impressions and (topic, partition) in watermarks:
                events.impression_clocks[partition] = watermarks[(topic, partition)]
        return events

    def _compute_and_commit(
        self,
        events: EventBatch,
        last: dict[TopicPartition, int],
        applied: dict[TopicPartition, int],
        watermarks: dict[TopicPartition, int],
    ) -> None:
        reads = BatchReads(events, self.store, self.keys, self.validator.embedding_dim)
        self.store.commit(self._compute(events, last, applied, watermarks, reads))

    def _compute(
        self,
        events: EventBatch,
        last: dict[TopicPartition, int],
        applied: dict[TopicPartition, int],
        watermarks: dict[TopicPartition, int],
        reads: BatchReads,
    ) -> WriteBatch:
        """The batch's writes: every processor's, then the guarded checkpoint."""
        batch = WriteBatch()
        for processor in self.processors:
            processor.apply(events, reads, batch)
        for (topic, partition), offset in last.items():
            key, field = self.keys.applied_offsets(topic), str(partition)
            stored = applied.get((topic, partition))
            # The offsets must still be what this batch was filtered against: that makes the
            # commit idempotent (a retry after a lost reply conflicts instead of re-applying).
            batch.guard(key, field, None if stored is None else str(stored))
            # Never below the stored offset: a replayed batch of pure duplicates must not move
            # the table back, or the messages after it would be applied a second time.
            high = max(offset, -1 if stored is None else stored)
            batch.hset(key, {field: str(high)})
            if (topic, partition) in watermarks:
                mark = str(watermarks[(topic, partition)])
                batch.hset(self.keys.watermarks(topic), {str(partition): mark})
        return batch

    def _decode_into(
        self,
        events: EventBatch,
        msg: RawMessage,
        now_ms: int,
        watermarks: dict[TopicPartition, int],
    ) -> bool:
        """Append the message's event to ``events``; False if it was rejected instead."""
        kind = self._kinds.get(msg.topic)
        if kind is None:
            self._reject(msg, f"no processor for topic {msg.topic!r}")
            return False
        try:
            event = self.validator.decode(kind, msg.value, now_ms=now_ms)
        except InvalidEventError as exc:
            self._reject(msg, str(exc))
            return False
        if kind is not Item:
            tp = (msg.topic, msg.partition)
            mark = watermarks.get(tp)
            lateness = self.settings.allowed_lateness_ms
            if mark is not None and event.ts < mark - lateness:
                self._reject(
                    msg,
                    f"ts {event.ts} is {mark - event.ts} ms behind the partition's event time"
                    f" (allowed lateness {lateness} ms) - at `$.ts`",
                )
                return False
            watermarks[tp] = event.ts if mark is None else max(mark, event.ts)
            if kind is Interaction:
                events.interactions.append(event)
            else:
                events.impressions.append((msg.partition, event))
        else:
            events.items.append(event)
        return True

    def _reject(self, msg: RawMessage, reason: str) -> None:
        self.dead_letter.reject(msg, reason)
        self.stats.dead_lettered += 1

    def _read_checkpoint(
        self, topics: list[str]
    ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """Last applied offset and event-time watermark of each partition, as stored."""
        keys = [k for t in topics for k in (self.keys.applied_offsets(t), self.keys.watermarks(t))]
        tables = self.store.hgetall_many(keys)
        offsets: dict[TopicPartition, int] = {}
        watermarks: dict[TopicPartition, int] = {}
        for n, topic in enumerate(topics):
            for partition, offset in tables[2 * n].items():
                offsets[(topic, int(partition))] = int(offset)
            for partition, mark in tables[2 * n + 1].items():
                watermarks[(topic, int(partition))] = int(mark)
        return offsets, watermarks

    def _with_store(self, fn: Callable[[], T], stop: threading.Event | None) -> T:
        """Call ``fn()``, waiting out a store outage with backoff; raise _Stopped if told to."""
        backoff = Backoff()
        stop = stop or threading.Event()
        while True:
            try:
                result = fn()
            except StoreUnavailableError as exc:
                if not self._store_down:
                    log.error("%s; retrying with backoff", exc)
                    self._store_down = True
                if stop.wait(backoff.next()):
                    raise _Stopped from None
                continue
            if self._store_down:
                log.info("store reachable again")
                self._store_down = False
            return result

    def _account(self, events: EventBatch) -> None:
        """Count a committed batch's events by kind and sample how fresh they were."""
        stats = self.stats
        stats.applied += len(events)
        stats.by_type.update(e.type for e in events.interactions)
        stats.by_type["item"] += len(events.items)
        stats.by_type["impression"] += len(events.impressions)
        now_ms = time.time() * 1000.0
        # Every 8th interaction is plenty for percentiles and keeps big batches cheap.
        stats.freshness_ms.extend(now_ms - e.ts for e in events.interactions[::8])

    def _maybe_heartbeat(self) -> None:
        now = self.clock()
        if now - self._last_heartbeat < self.settings.heartbeat_s:
            return
        self._last_heartbeat = now
        lag = self.source.lag()
        self.stats.lag = {f"{t}/{p}": n for (t, p), n in sorted(lag.items())}
        beat = {
            "ts": now,
            "pid": os.getpid(),
            "applied": self.stats.applied,
            "dead_lettered": self.stats.dead_lettered,
            "skipped_duplicates": self.stats.skipped_duplicates,
            "batches": self.stats.batches,
            "last_batch_ms": round(self.stats.last_batch_ms, 3),
            "lag": {f"{t}/{p}": n for (t, p), n in sorted(lag.items())},
            "store_ok": not self._store_down,
            "by_type": dict(self.stats.by_type),
            "freshness_ms": _percentiles(self.stats.freshness_ms),
        }
        self.stats.freshness_ms.clear()
        batch = WriteBatch()
        batch.hset(self.keys.workers(), {self.worker_id: orjson.dumps(beat).decode()})
        try:
            self.store.commit(batch)
        except StoreUnavailableError:
            pass  # the outage is already logged by the batch path; /health sees it directly


def _percentiles(values: deque[float]) -> dict[str, float | None]:
    """p50 and p99 (nearest rank) of recent freshness samples; None when there are none."""
    if not values:
        return {"p50": None, "p99": None}
    ordered = sorted(values)
    n = len(ordered)
    return {
        "p50": round(ordered[(n - 1) // 2], 3),
        "p99": round(ordered[min(n - 1, -(-99 * n // 100) - 1)], 3),
    }
