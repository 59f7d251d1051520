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
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from typing import TypeVar

import orjson

from features.batch import WriteBatch
from features.errors import ConflictError, StoreUnavailableError
from features.keys import Keys
from features.store import Store
from streams.io.dead_letter import DeadLetterPolicy
from streams.io.transport import MessageSource, RawMessage
from streams.schema import EventValidator
from streams.settings import TopicSettings, WorkerSettings
from streams.worker.batch_limit import BatchLimit
from streams.worker.catalog_gate import CatalogGate
from streams.worker.dedup import KnownIds
from streams.worker.planner import (
    BatchPlanner,
    MessageAt,
    PartitionMarks,
    last_offsets,
    read_checkpoint,
)
from streams.worker.processors import BatchReads, EventBatch, Processor
from streams.worker.recovery import RecoveringSource, Rewindable
from streams.worker.stats import WorkerStats, percentiles

log = logging.getLogger(__name__)
T = TypeVar("T")


class StopRequested(Exception):
    """The worker was told to stop while waiting for the store."""


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
    """Applies event batches from a message source to the store: the synchronous driver of
    the :class:`BatchPlanner` (read the checkpoint, screen, compute, commit, in turn)."""

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
        self.topics = topics
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.clock = clock or time.time
        self.stats = WorkerStats()
        self.planner = BatchPlanner(
            keys=keys,
            processors=processors,
            validator=validator,
            dead_letter=dead_letter,
            topics=topics,
            settings=settings,
            stats=self.stats,
        )
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
                read_offsets=lambda topics: self.read_checkpoint(topics)[0],
                inputs=self.planner.inputs,
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
        rejected: set[MessageAt] | None = None,
    ) -> int:
        """Apply one batch (also the entry point for push-based runtimes); return events
        applied. ``rejected`` holds messages already dead-lettered by an earlier attempt."""
        try:
            return self._apply(messages, stop, set() if rejected is None else rejected)
        except StopRequested:
            return 0  # nothing was committed; the batch is consumed again after restart

    def read_checkpoint(self, topics: Sequence[str]) -> tuple[PartitionMarks, PartitionMarks]:
        """Last applied offset and event-time watermark of each partition, as stored."""
        return read_checkpoint(self.store, self.keys, topics)

    def reconcile(self, applied: PartitionMarks, messages: list[RawMessage]) -> list[RawMessage]:
        """Given the whole checkpoint just read, rewind what the store lost (with recovery
        on) and return the messages still to apply."""
        if self.recovery is None:
            return messages
        return self.recovery.reconcile(applied, messages)

    def checkpoint_topics(self, messages: Sequence[RawMessage]) -> list[str]:
        """Whose checkpoint a batch reads: with recovery on, every input's (a loss shows on
        any partition), else the batch's own topics'."""
        return self.planner.inputs if self.recovery else sorted({m.topic for m in messages})

    def _apply(
        self,
        messages: list[RawMessage],
        stop: threading.Event | None,
        rejected: set[MessageAt],
    ) -> int:
        started = time.perf_counter()
        polled = len(messages)
        while True:
            applied, watermarks = self._with_store(
                partial(self.read_checkpoint, self.checkpoint_topics(messages)), stop
            )
            messages = self.reconcile(applied, messages)
            if not messages:
                return 0  # all of it is consumed again, after what the store still has
            last = last_offsets(messages)
            events = self.planner.screen(
                messages,
                applied,
                watermarks,
                rejected=rejected,
                known=self._known_ids(stop),
                stored_watermarks=self._stored_watermarks,
                now_ms=int(self.clock() * 1000),
            )
            try:
                commit = partial(
                    self._compute_and_commit, events, last, applied, watermarks, polled
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
        self._landed(last, events, started)
        return len(events)

    def _landed(self, last: PartitionMarks, events: EventBatch, started: float) -> None:
        """A batch is in the store: commit its consumer offsets and count it."""
        self.source.commit({tp: offset + 1 for tp, offset in last.items()})
        stats = self.stats
        stats.applied += len(events)
        stats.by_type.update(e.type for e in events.interactions)
        stats.by_type["item"] += len(events.items)
        stats.by_type["impression"] += len(events.impressions)
        now_ms = time.time() * 1000.0
        # Every 8th interaction is plenty for percentiles and keeps big batches cheap.
        stats.freshness_ms.extend(now_ms - e.ts for e in events.interactions[::8])
        stats.batches += 1
        stats.last_batch_ms = (time.perf_counter() - started) * 1000.0

    def _isolate(
        self,
        messages: list[RawMessage],
        stop: threading.Event | None,
        rejected: set[MessageAt],
        exc: Exception,
    ) -> int:
        """Apply ``messages`` in halves (each partition stays in order) until the message
        that cannot be applied is alone; dead-letter it with the reason."""
        fresh = [m for m in messages if ((m.topic, m.partition), m.offset) not in rejected]
        if not fresh:
            raise exc  # not an event's doing
        if len(fresh) == 1:
            for msg in fresh:
                log.error(
                    "message %s/%d@%d cannot be applied: %r",
                    msg.topic,
                    msg.partition,
                    msg.offset,
                    exc,
                )
                self.planner.reject(msg, f"cannot be applied: {type(exc).__name__}: {exc}")
                rejected.add(((msg.topic, msg.partition), msg.offset))
            self.planner.dead_letter.flush()
            return self._apply(messages, stop, rejected)  # commits the offsets past it
        half = len(messages) // 2
        return self._apply(messages[:half], stop, rejected) + self._apply(
            messages[half:], stop, rejected
        )

    def _known_ids(self, stop: threading.Event | None) -> KnownIds:
        """Which ids a partition applied, as stored (waiting out a store outage)."""
        stored = self.planner.event_ids.stored_in(self.store)
        return lambda partition, ids: self._with_store(partial(stored, partition, ids), stop)

    def _stored_watermarks(self, topics: list[str]) -> PartitionMarks:
        """Event-time watermarks as the store has them (the pipelined worker adds its own)."""
        return self.read_checkpoint(topics)[1]

    def _compute_and_commit(
        self,
        events: EventBatch,
        last: PartitionMarks,
        applied: PartitionMarks,
        watermarks: PartitionMarks,
        polled: int,
    ) -> None:
        reads = BatchReads(events, self.store, self.keys, self.planner.validator.embedding_dim)
        batch = self.planner.compute(events, last, applied, watermarks, reads)
        self._commit(batch, len(events), polled)

    def _commit(self, batch: WriteBatch, events: int, polled: int) -> None:
        """Commit a batch's writes, and size the next batches by how long it took."""
        started = time.perf_counter()
        self.store.commit(batch)
        elapsed_ms = (time.perf_counter() - started) * 1e3
        self.batch_limit.observe(events=events, commit_ms=elapsed_ms, polled=polled)

    def _stored_items(self) -> dict[int, int]:
        """Last applied offset of each items partition, as stored."""
        offsets = self.read_checkpoint([self.topics.items])[0]
        return {partition: offset for (_, partition), offset in offsets.items()}

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
            "freshness_ms": percentiles(self.stats.freshness_ms),
        }
        self.stats.freshness_ms.clear()
        batch = WriteBatch()
        batch.hset(self.keys.workers(), {self.worker_id: orjson.dumps(beat).decode()})
        try:
            self.store.commit(batch)
        except StoreUnavailableError:
            pass  # the outage is already logged by the batch path; /health sees it directly
