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

The offset table is also what tells a worker that the store *lost* effects: Redis restarted
with nothing on disk, or without its last writes. Kafka's committed offsets only ever follow
the table, so a table that went back is a loss, and :class:`RecoveringSource` rewinds those
partitions to it (to the log's beginning when nothing is left) and replays them, the catalog
first, so that the state is rebuilt from the log.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar, runtime_checkable

import orjson

from features.batch import WriteBatch
from features.errors import (
    ConflictError,
    InvalidEventError,
    StoreUnavailableError,
    TransportUnavailableError,
)
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
        #: With a source that can rewind (Kafka), the worker notices a store that lost
        #: effects and replays them; the in-process bus and its store live and die together.
        self.recovery: RecoveringSource | None = None
        if isinstance(source, Rewindable):
            self.recovery = RecoveringSource(
                source,
                read_offsets=lambda topics: self._read_checkpoint(topics)[0],
                inputs=sorted(self._kinds),
                items_topic=topics.items,
                check_every_s=settings.heartbeat_s,
            )
            source = self.recovery
        self.source: MessageSource = source

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
        rejected: set[tuple[TopicPartition, int]] = set()
        while True:
            # With recovery on, the whole checkpoint: a loss shows on any partition.
            topics = self.recovery.inputs if self.recovery else sorted({m.topic for m in messages})
            applied_offsets, watermarks = self._with_store(
                partial(self._read_checkpoint, topics), stop
            )
            if self.recovery is not None:
                messages = self.recovery.reconcile(applied_offsets, messages)
                if not messages:
                    return 0  # all of it is consumed again, after what the store still has
            last: dict[TopicPartition, int] = {}
            for msg in messages:
                tp = (msg.topic, msg.partition)
                last[tp] = max(msg.offset, last.get(tp, -1))
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
        except Exception as exc:  # noqa: BLE001 - no message may stop the worker
            self._reject(msg, f"undecodable: {type(exc).__name__}: {exc}")
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
                if self.recovery is not None:
                    self.recovery.recheck()  # did it come back with everything?
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
            "rewinds": self.recovery.rewinds if self.recovery is not None else 0,
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


# ------------------------------------------------------------------ a store that lost effects

#: Longest the other partitions wait for the catalog to be applied again after a loss: past
#: it they go on (logged), rather than stall the stream on an items partition nobody applies.
CATALOG_WAIT_MAX_S = 120.0


@runtime_checkable
class Rewindable(Protocol):
    """A :class:`MessageSource` that can also consume partitions again (Kafka's can)."""

    generation: int
    assigned: set[TopicPartition]

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[RawMessage]: ...
    def commit(self, next_offsets: Mapping[TopicPartition, int]) -> None: ...
    def lag(self) -> dict[TopicPartition, int]: ...
    def close(self) -> None: ...
    def committed(self, tps: Collection[TopicPartition]) -> dict[TopicPartition, int]: ...
    def rewind(self, tp: TopicPartition, offset: int | None) -> None: ...
    def pause(self, tps: Collection[TopicPartition]) -> None: ...
    def resume(self, tps: Collection[TopicPartition]) -> None: ...
    def end_offsets(self, topic: str) -> dict[int, tuple[int, int]]: ...


class RecoveringSource:
    """A message source that keeps the log in step with the store's offset table.

    The table says what is applied, and Kafka's committed offsets only ever follow it (a
    batch is committed to Kafka after its state is in the store). So a table that holds less
    than this worker applied, or than its group committed, means that the store lost effects:
    Redis came back with nothing on disk, or without its last writes. Each such partition is
    rewound to the table (to the log's beginning when nothing is left) and replayed; the
    exactly-once guard is untouched, as the replay starts right after what the store holds.
    When the catalog (the items topic) is behind as well, the other partitions pause until it
    is applied again, as it was the first time round, because interactions read the
    categories and vectors of their items.

    The table is checked in the checkpoint the worker reads before each synchronous batch
    (:meth:`reconcile`), against the group's committed offsets whenever partitions are
    assigned, and every ``check_every_s`` (an idle worker notices a wipe too).
    """

    def __init__(
        self,
        source: Rewindable,
        *,
        read_offsets: Callable[[list[str]], dict[TopicPartition, int]],
        inputs: list[str],
        items_topic: str,
        check_every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.read_offsets = read_offsets
        self.inputs = inputs
        self.items_topic = items_topic
        self.check_every_s = check_every_s
        self.clock = clock
        #: Offsets the store is known to hold: this worker's commits, the group's.
        self.applied: dict[TopicPartition, int] = {}
        #: Rewound since the last poll: messages the worker still holds of them are void.
        self.stale: set[TopicPartition] = set()
        #: Paused until the catalog is applied again (``catalog_targets``).
        self.held: set[TopicPartition] = set()
        self.catalog_targets: dict[int, int] | None = None
        self.rewinds = 0
        self._held_since = 0.0
        self._release_checked_at = float("-inf")
        self._checked_generation: int | None = None
        self._checked_at = float("-inf")

    # --- the MessageSource the worker sees ---------------------------------------------------

    @property
    def generation(self) -> int:
        """The wrapped source's."""
        return self.source.generation

    @generation.setter
    def generation(self, value: int) -> None:
        self.source.generation = value

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[RawMessage]:
        """The next batch, less what must wait or be consumed again."""
        messages = self.source.poll_batch(max_messages, timeout_s)
        # Fetched after every earlier rewind: nothing the worker holds from now on is stale,
        # except what a rewind below makes so.
        self.stale.clear()
        self._maybe_check()
        self._maybe_release()
        return self._screen(messages)

    def commit(self, next_offsets: Mapping[TopicPartition, int]) -> None:
        """Commit to Kafka what the store now holds (and remember it)."""
        fresh = {tp: o for tp, o in next_offsets.items() if tp not in self.stale}
        for tp, offset in fresh.items():
            if offset - 1 > self.applied.get(tp, -1):
                self.applied[tp] = offset - 1
        self.source.commit(fresh)

    def lag(self) -> dict[TopicPartition, int]:
        """The wrapped source's."""
        return self.source.lag()

    def close(self) -> None:
        """Close the wrapped source."""
        self.source.close()

    # --- what the worker calls ----------------------------------------------------------------

    def reconcile(
        self, stored: Mapping[TopicPartition, int], messages: list[RawMessage]
    ) -> list[RawMessage]:
        """Given the checkpoint just read (every input topic), rewind what the store lost and
        return the messages still to apply."""
        lost = self._lost(stored)
        if lost:
            self._rewind(lost, stored)
        return self._keep(messages)

    def recheck(self) -> None:
        """Check the table at the next poll (the store was unreachable)."""
        self._checked_at = float("-inf")

    # --- internals ------------------------------------------------------------------------------

    def _keep(self, messages: list[RawMessage]) -> list[RawMessage]:
        skip = self.stale | self.held
        if not skip:
            return messages
        return [m for m in messages if (m.topic, m.partition) not in skip]

    def _lost(self, stored: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Assigned partitions whose stored offset is below what is known to be applied."""
        assigned = self.source.assigned
        return {
            tp: known
            for tp, known in self.applied.items()
            if tp in assigned and stored.get(tp, -1) < known
        }

    def _maybe_check(self) -> None:
        generation = self.source.generation
        now = self.clock()
        assigned_anew = generation != self._checked_generation
        if not assigned_anew and now - self._checked_at < self.check_every_s:
            return
        try:
            if assigned_anew:
                for tp, offset in self.source.committed(self.source.assigned).items():
                    self.applied[tp] = max(self.applied.get(tp, -1), offset - 1)
            stored = self.read_offsets(self.inputs)
        except (StoreUnavailableError, TransportUnavailableError):
            return  # checked at a later poll
        self._checked_generation, self._checked_at = generation, now
        lost = self._lost(stored)
        if lost:
            self._rewind(lost, stored)

    def _rewind(
        self, lost: Mapping[TopicPartition, int], stored: Mapping[TopicPartition, int]
    ) -> None:
        rewound = [tp for tp in sorted(lost) if self._seek(tp, stored.get(tp))]
        self.rewinds += 1
        shown = ", ".join(
            f"{t}/{p} {stored.get((t, p), 'nothing')} < {lost[(t, p)]}" for t, p in rewound[:3]
        )
        log.warning(
            "the store holds less than was applied (%s%s): replaying %d partition(s) from the "
            "log, from the store's checkpoint on",
            shown,
            ", …" if len(rewound) > 3 else "",
            len(rewound),
        )
        if self.catalog_targets is None:
            self._hold_for_catalog(stored)

    def _seek(self, tp: TopicPartition, stored: int | None) -> bool:
        """Consume ``tp`` again right after ``stored``; the messages held of it are void."""
        self.stale.add(tp)
        try:
            self.source.rewind(tp, None if stored is None else stored + 1)
        except TransportUnavailableError as exc:
            # Its messages stay void and the loss stays known: the next check tries again.
            log.warning("could not rewind %s/%d (%s); retrying", tp[0], tp[1], exc)
            return False
        self.applied[tp] = -1 if stored is None else stored
        return True

    def _hold_for_catalog(self, stored: Mapping[TopicPartition, int]) -> None:
        """Pause every other partition while the store's catalog is behind the items topic."""
        try:
            ends = self.source.end_offsets(self.items_topic)
        except TransportUnavailableError as exc:
            log.warning("cannot tell whether the catalog is complete (%s); not waiting", exc)
            return
        targets = {
            p: high - 1
            for p, (low, high) in ends.items()
            if high > low and stored.get((self.items_topic, p), -1) < high - 1
        }
        if not targets:
            return
        others = {tp for tp in self.source.assigned if tp[0] != self.items_topic}
        for tp in sorted(others - self.stale):
            self._seek(tp, stored.get(tp))  # what the worker holds of them waits too
        self.source.pause(others)
        self.held |= others
        self.catalog_targets = targets
        self._held_since = self.clock()
        log.warning(
            "the catalog is behind too: %d partition(s) wait until %d items partition(s) are "
            "applied again",
            len(others),
            len(targets),
        )

    def _maybe_release(self) -> None:
        if self.catalog_targets is None:
            return
        now = self.clock()
        if now - self._release_checked_at < 0.2:
            return
        self._release_checked_at = now
        try:
            stored = self.read_offsets([self.items_topic])
        except StoreUnavailableError:
            return
        behind = sorted(
            p
            for p, target in self.catalog_targets.items()
            if stored.get((self.items_topic, p), -1) < target
        )
        waited = now - self._held_since
        if behind and waited < CATALOG_WAIT_MAX_S:
            return
        if behind:
            log.warning(
                "the catalog is still behind after %.0f s (items partitions %s); going on",
                waited,
                behind,
            )
        else:
            log.info("catalog applied again in %.1f s; replaying the other partitions", waited)
        self.source.resume(self.held)
        self.held.clear()
        self.catalog_targets = None

    def _screen(self, messages: list[RawMessage]) -> list[RawMessage]:
        """Messages of partitions that must wait for the catalog go back to the log."""
        if self.catalog_targets is not None and messages:
            first: dict[TopicPartition, int] = {}
            for msg in messages:
                tp = (msg.topic, msg.partition)
                if tp[0] != self.items_topic and tp not in self.stale:
                    first[tp] = min(msg.offset, first.get(tp, msg.offset))
            waiting: set[TopicPartition] = set()
            for tp, offset in first.items():
                # Newly assigned, or fetched before the pause took: consume them again later.
                try:
                    self.source.rewind(tp, offset)
                except TransportUnavailableError:
                    continue  # then they are applied now: out of order beats lost
                waiting.add(tp)
            self.source.pause(waiting)
            self.stale |= waiting
            self.held |= waiting
        return self._keep(messages)
