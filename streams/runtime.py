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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, TypeVar

import orjson

from features.batch import WriteBatch
from features.errors import (
    ConflictError,
    InvalidEventError,
    StoreUnavailableError,
)
from features.keys import Keys
from features.store import Store
from streams.batch_limit import BatchLimit
from streams.catalog_gate import CatalogGate
from streams.dead_letter import DeadLetterPolicy
from streams.dedup import Candidate, EventIdFilter, KnownIds
from streams.processors import BatchReads, EventBatch, Processor
from streams.recovery import RecoveringSource, Rewindable
from streams.schema import EventValidator, Impression, Interaction, Item
from streams.settings import TopicSettings, WorkerSettings
from streams.transport import MessageSource, RawMessage, TopicPartition

log = logging.getLogger(__name__)
T = TypeVar("T")


#: Longest event time a partition's feeds wait for its clicks to catch up (see
#: :meth:`Worker._feedback_clocks`); within the records' lifetime (streams/feedback.py).
CLICKS_IDLE_MAX_MS = 3_600_000


class StopRequested(Exception):
    """The worker was told to stop while waiting for the store."""


@dataclass
class WorkerStats:
    """Counters a worker reports in its heartbeat."""

    applied: int = 0
    skipped_duplicates: int = 0
    #: Interactions dead-lettered because their event id was applied before (re-sends).
    resent: int = 0
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
        commit_target_ms: float = 0.0,
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
        self.event_ids = EventIdFilter(keys, topics.interactions, settings.dedup_window_ms)
        # 0 (the in-process runtimes): always batch_size, so a replay cuts the same batches.
        self.batch_limit = BatchLimit(settings.batch_size, commit_target_ms)
        self._last_heartbeat = 0.0
        #: True from a failed store call until one succeeds again.
        self.store_down = False
        #: With a source that can rewind (Kafka), the worker notices a store that lost
        #: effects and replays them; the in-process bus and its store live and die together.
        self.recovery: RecoveringSource | None = None
        #: The catalog goes first (Kafka only: the bus hands out events in the order sent).
        self.gate: CatalogGate | None = None
        if isinstance(source, Rewindable):
            self.gate = source = CatalogGate(
                source,
                items_topic=topics.items,
                stored_items=self._stored_items,
                max_wait_s=settings.catalog_wait_ms / 1000.0,
            )
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
            self.batch_limit.current, self.settings.batch_timeout_ms / 1000.0
        )
        applied = self.apply_messages(messages, stop) if messages else 0
        self._maybe_heartbeat()
        return applied

    def apply_messages(
        self,
        messages: list[RawMessage],
        stop: threading.Event | None = None,
        rejected: set[tuple[TopicPartition, int]] | None = None,
    ) -> int:
        """Apply one batch (also the entry point for push-based runtimes); return events
        applied. ``rejected`` holds messages already dead-lettered by an earlier attempt."""
        try:
            return self._apply(messages, stop, set() if rejected is None else rejected)
        except StopRequested:
            return 0  # nothing was committed; the batch is consumed again after restart

    def _apply(
        self,
        messages: list[RawMessage],
        stop: threading.Event | None,
        rejected: set[tuple[TopicPartition, int]],
    ) -> int:
        started = time.perf_counter()
        polled = len(messages)
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
            known = self._known_ids(stop)
            events = self._fresh_events(messages, applied_offsets, watermarks, rejected, known)
            self.dead_letter.flush()
            try:
                commit = partial(
                    self._compute_and_commit, events, last, applied_offsets, watermarks, polled
                )
                self._with_store(commit, stop)
                break
            except (ArithmeticError, ValueError) as exc:
                # Nothing was written. Some event the processors cannot represent must not
                # crash-loop the stream: find it, dead-letter it, apply the rest.
                return self._isolate(messages, stop, rejected, exc)
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

    def _isolate(
        self,
        messages: list[RawMessage],
        stop: threading.Event | None,
        rejected: set[tuple[TopicPartition, int]],
        exc: Exception,
    ) -> int:
        """Apply ``messages`` in halves (each partition stays in order) until the message
        that cannot be applied is alone; dead-letter it with the reason."""
        fresh = [m for m in messages if ((m.topic, m.partition), m.offset) not in rejected]
        if not fresh:
            raise exc  # not an event's doing
        if len(fresh) == 1:
            for msg in fresh:
                log.error("message %s/%d@%d cannot be applied: %r", *_at(msg), exc)
                self._reject(msg, f"cannot be applied: {type(exc).__name__}: {exc}")
                rejected.add(((msg.topic, msg.partition), msg.offset))
            self.dead_letter.flush()
            return self._apply(messages, stop, rejected)  # commits the offsets past it
        half = len(messages) // 2
        return self._apply(messages[:half], stop, rejected) + self._apply(
            messages[half:], stop, rejected
        )

    def _known_ids(self, stop: threading.Event | None) -> KnownIds:
        """Which ids a partition applied, as stored (waiting out a store outage)."""
        stored = self.event_ids.stored_in(self.store)
        return lambda partition, ids: self._with_store(partial(stored, partition, ids), stop)

    def _fresh_events(
        self,
        messages: list[RawMessage],
        applied_offsets: dict[TopicPartition, int],
        watermarks: dict[TopicPartition, int],
        rejected: set[tuple[TopicPartition, int]],
        known: KnownIds,
    ) -> EventBatch:
        """Decode the messages the store has not applied; reject each bad one, and each
        re-sent event id (``known`` tells which ids a partition applied), only once."""
        events = EventBatch()
        interactions: list[tuple[RawMessage, Interaction, int]] = []
        # Sent once the store has answered which ids are known: a read that fails leaves
        # nothing half dead-lettered (the pipelined worker then redoes the whole batch).
        rejects: list[tuple[RawMessage, str]] = []
        now_ms = int(self.clock() * 1000)
        for msg in messages:
            tp = (msg.topic, msg.partition)
            if msg.offset <= applied_offsets.get(tp, -1):
                self.stats.skipped_duplicates += 1
                continue
            if (tp, msg.offset) in rejected:
                continue
            reason = self._decode_into(events, msg, now_ms, watermarks, interactions)
            if reason is not None:
                rejects.append((msg, reason))
        if self.event_ids.enabled:
            candidates = [
                Candidate(msg.partition, e.event_id, e.ts, mark) for msg, e, mark in interactions
            ]
            repeats = self.event_ids.duplicates(candidates, known)
        else:  # dedup off: no per-event work on the hot path
            repeats = [False] * len(interactions)
        for (msg, event, _), repeated in zip(interactions, repeats, strict=True):
            if repeated:
                reason = (
                    f"duplicate event_id {event.event_id!r}: partition {msg.partition} "
                    "already applied it - at `$.event_id`"
                )
                rejects.append((msg, reason))
                self.stats.resent += 1
                continue
            events.interactions.append(event)
            events.event_ids.setdefault(msg.partition, {})[event.event_id] = event.ts
        for msg, reason in rejects:
            self._reject(msg, reason)
            rejected.add(((msg.topic, msg.partition), msg.offset))
        events.impression_clocks = self._feedback_clocks(messages, watermarks)
        return events

    def _feedback_clocks(
        self, messages: list[RawMessage], watermarks: dict[TopicPartition, int]
    ) -> dict[int, int]:
        """The event time up to which each partition's served feeds may close: the lower of
        its impressions' and its clicks' (a user's feeds and clicks share a partition
        number). A feed thus closes only once the clicks of its window are applied, however
        the two topics' backlogs interleave after a restart."""
        imp, clicks = self.topics.impressions, self.topics.interactions
        partitions = sorted({m.partition for m in messages if m.topic in (imp, clicks)})
        if not partitions:
            return {}
        marks = dict(watermarks)
        if any((t, p) not in marks for p in partitions for t in (imp, clicks)):
            for (t, p), mark in self._stored_watermarks([imp, clicks]).items():
                marks.setdefault((t, p), mark)
        # A clicks partition that stays idle (its users browse without a single interaction)
        # holds its feeds back no longer than this, or their records would expire unlearned.
        idle_ms = min(self.settings.allowed_lateness_ms, CLICKS_IDLE_MAX_MS)
        out: dict[int, int] = {}
        for p in partitions:
            shown, clicked = marks.get((imp, p)), marks.get((clicks, p))
            if shown is not None:
                # No click on the partition yet: nothing to wait for.
                out[p] = shown if clicked is None else max(min(shown, clicked), shown - idle_ms)
        return out

    def _stored_watermarks(self, topics: list[str]) -> dict[TopicPartition, int]:
        """Event-time watermarks as the store has them (the pipelined worker adds its own)."""
        return self._read_checkpoint(topics)[1]

    def _compute_and_commit(
        self,
        events: EventBatch,
        last: dict[TopicPartition, int],
        applied: dict[TopicPartition, int],
        watermarks: dict[TopicPartition, int],
        polled: int,
    ) -> None:
        reads = BatchReads(events, self.store, self.keys, self.validator.embedding_dim)
        batch = self._compute(events, last, applied, watermarks, reads)
        self._commit(batch, len(events), polled)

    def _commit(self, batch: WriteBatch, events: int, polled: int) -> None:
        """Commit a batch's writes, and size the next batches by how long it took."""
        started = time.perf_counter()
        self.store.commit(batch)
        elapsed_ms = (time.perf_counter() - started) * 1e3
        self.batch_limit.observe(events=events, commit_ms=elapsed_ms, polled=polled)

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
        interactions = self.topics.interactions
        self.event_ids.record(
            batch,
            events.event_ids,
            {p: mark for (t, p), mark in watermarks.items() if t == interactions},
        )
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
        interactions: list[tuple[RawMessage, Interaction, int]],
    ) -> str | None:
        """Append the message's event to ``events`` (an interaction to ``interactions``, with
        its partition's event time, to be screened for re-sends); return why it is rejected
        instead."""
        kind = self._kinds.get(msg.topic)
        if kind is None:
            return f"no processor for topic {msg.topic!r}"
        try:
            event = self.validator.decode(kind, msg.value, now_ms=now_ms)
        except InvalidEventError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - no message may stop the worker
            return f"undecodable: {type(exc).__name__}: {exc}"
        if kind is not Item:
            tp = (msg.topic, msg.partition)
            mark = watermarks.get(tp)
            lateness = self.settings.allowed_lateness_ms
            if mark is not None and event.ts < mark - lateness:
                return (
                    f"ts {event.ts} is {mark - event.ts} ms behind the partition's event time"
                    f" (allowed lateness {lateness} ms) - at `$.ts`"
                )
            watermarks[tp] = event.ts if mark is None else max(mark, event.ts)
            if kind is Interaction:
                interactions.append((msg, event, watermarks[tp]))
            else:
                events.impressions.append((msg.partition, event))
        else:
            events.items.append(event)
        return None

    def _reject(self, msg: RawMessage, reason: str) -> None:
        self.dead_letter.reject(msg, reason)
        self.stats.dead_lettered += 1

    def _stored_items(self) -> dict[int, int]:
        """Last applied offset of each items partition, as stored."""
        offsets = self._read_checkpoint([self.topics.items])[0]
        return {partition: offset for (_, partition), offset in offsets.items()}

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
        """Call ``fn()``, waiting out a store outage with backoff; StopRequested if told to."""
        backoff = Backoff()
        stop = stop or threading.Event()
        while True:
            try:
                result = fn()
            except StoreUnavailableError as exc:
                if not self.store_down:
                    log.error("%s; retrying with backoff", exc)
                    self.store_down = True
                if stop.wait(backoff.next()):
                    raise StopRequested from None
                continue
            if self.store_down:
                log.info("store reachable again")
                self.store_down = False
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
        self.batch_limit.observe_backlog(sum(lag.values()))
        beat = {
            "ts": now,
            "pid": os.getpid(),
            "applied": self.stats.applied,
            "dead_lettered": self.stats.dead_lettered,
            "skipped_duplicates": self.stats.skipped_duplicates,
            "resent": self.stats.resent,
            "batches": self.stats.batches,
            "last_batch_ms": round(self.stats.last_batch_ms, 3),
            "batch_limit": self.batch_limit.current,
            "lag": {f"{t}/{p}": n for (t, p), n in sorted(lag.items())},
            "store_ok": not self.store_down,
            "rewinds": self.recovery.rewinds if self.recovery is not None else 0,
            "catalog_wait": asdict(self.gate.stats) if self.gate is not None else None,
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


def _at(msg: RawMessage) -> tuple[str, int, int]:
    return msg.topic, msg.partition, msg.offset


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
