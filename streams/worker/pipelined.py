"""The worker with its commits in flight: batch N+1 is decoded and computed while Redis
applies batch N.

Batch N+1 may only read what batch N left behind, so reads go through a
:class:`StateCache` of what this worker has written (its own users' state, its partitions'
checkpoint, the landmarks) and recently read (items). Anything the cache cannot answer
first waits for the commit in flight (the barrier) and then reads the store. If a commit
fails (a conflict, an outage), the cache is dropped and that batch and the one computed on
top of it are applied again by the plain, synchronous path, which re-reads everything.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from features.batch import WriteBatch
from features.errors import StoreUnavailableError
from streams.io.transport import RawMessage
from streams.worker.dedup import KnownIds
from streams.worker.planner import MessageAt, PartitionMarks, last_offsets
from streams.worker.processors import BatchReads, EventBatch
from streams.worker.runtime import StopRequested, Worker
from streams.worker.state_cache import StateCache

log = logging.getLogger(__name__)


class _InflightFailed(Exception):
    """The commit in flight failed; what was computed on top of it is void."""


@dataclass
class _Inflight:
    future: Future[None]
    messages: list[RawMessage]
    last: PartitionMarks
    events: EventBatch
    started: float
    #: Messages dead-lettered while planning: a synchronous redo must not send them again.
    rejected: set[MessageAt]


class PipelinedWorker(Worker):
    """A :class:`Worker` whose :meth:`run` overlaps computing with committing."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cache = StateCache()
        self._inflight: _Inflight | None = None
        self._generation = self.source.generation
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")

    def run(self, stop: threading.Event) -> None:
        """Process batches until ``stop`` is set, then finish the last commit and leave."""
        log.info("worker %s started (pipelined commits)", self.worker_id)
        try:
            while not stop.is_set():
                messages = self.source.poll_batch(
                    self.batch_limit.current, self.settings.batch_timeout_ms / 1000.0
                )
                try:
                    if messages:
                        self._pipeline(messages, stop)
                    else:
                        self._finish(stop)  # idle: land the last batch now
                except StopRequested:
                    break
                except _InflightFailed:
                    pass  # that batch was applied again synchronously
                self._maybe_heartbeat()
            try:
                self._finish(stop)
            except (StopRequested, _InflightFailed):
                pass  # uncommitted batches are consumed again after a restart
        finally:
            self._committer.shutdown(wait=True)
            self.source.close()
            log.info("worker %s stopped: %s", self.worker_id, self.stats)

    def _pipeline(self, messages: list[RawMessage], stop: threading.Event) -> None:
        if self.source.generation != self._generation:
            # Partitions changed hands: what the cache knows about users may be stale now.
            self._finish(stop)
            self.cache.clear()
            self._generation = self.source.generation
        elif self.cache.oversized:
            self._finish(stop)
            self.cache.trim()
        started = time.perf_counter()
        rejected: set[MessageAt] = set()
        try:
            planned = self._plan(messages, stop, rejected)
            self._finish(stop)
        except _InflightFailed:
            self.cache.clear()
            self.apply_messages(messages, stop, rejected)
            return
        except (StoreUnavailableError, ArithmeticError, ValueError) as exc:
            # Land (or redo) the commit in flight first, or its batch could be skipped; the
            # synchronous path then waits out an outage with backoff, or sets aside the
            # event the processors cannot represent.
            log.info("planning failed (%s); applying synchronously", exc)
            with contextlib.suppress(_InflightFailed):
                self._finish(stop)
            self.cache.clear()
            self.apply_messages(messages, stop, rejected)
            return
        if planned is None:
            return
        batch, last, events = planned
        future = self._committer.submit(self._commit, batch, len(events), len(messages))
        self._inflight = _Inflight(future, messages, last, events, started, rejected)

    def _plan(
        self,
        messages: list[RawMessage],
        stop: threading.Event,
        rejected: set[MessageAt],
    ) -> tuple[WriteBatch, PartitionMarks, EventBatch] | None:
        """Screen and compute a batch from the cache (reading the store only past the
        barrier), and let the cache absorb what the batch will write. None when the batch
        is void: the store lost effects, and its partitions are consumed again."""
        cache = self.cache
        if not all((m.topic, m.partition) in cache.offsets for m in messages):
            self._finish(stop)
            stored_offsets, stored_marks = self.read_checkpoint(self.checkpoint_topics(messages))
            messages = self.reconcile(stored_offsets, messages)
            if not messages:
                return None
            for tp in last_offsets(messages):
                cache.offsets.setdefault(tp, stored_offsets.get(tp, -1))
                if tp in stored_marks:
                    cache.watermarks.setdefault(tp, stored_marks[tp])
        last = last_offsets(messages)
        applied = {tp: cache.offsets[tp] for tp in last if cache.offsets[tp] >= 0}
        watermarks = {tp: cache.watermarks[tp] for tp in last if tp in cache.watermarks}
        events = self.planner.screen(
            messages,
            applied,
            watermarks,
            rejected=rejected,
            known=self._known_while_planning(),
            stored_watermarks=self._stored_watermarks,
            now_ms=int(self.clock() * 1000),
        )
        reads = BatchReads(
            events,
            self.store,
            self.keys,
            self.planner.validator.embedding_dim,
            cache=cache,
            barrier=lambda: self._finish(stop),
        )
        batch = self.planner.compute(events, last, applied, watermarks, reads)
        cache.absorb(batch, self.keys)
        return batch, last, events

    def _stored_watermarks(self, topics: list[str]) -> PartitionMarks:
        """What the store has, under what this worker's commits in flight will write."""
        marks = super()._stored_watermarks(topics)
        marks.update({tp: m for tp, m in self.cache.watermarks.items() if tp[0] in topics})
        return marks

    def _known_while_planning(self) -> KnownIds:
        """Ids the store holds, or the commit in flight is writing: a re-send in the next
        batch must be caught before that commit lands. Unlike the synchronous path's, it
        does not wait out a store outage: that propagates to :meth:`_pipeline`, which then
        takes the synchronous path."""
        stored = self.planner.event_ids.stored_in(self.store)
        inflight = self._inflight

        def known(partition: int, ids: list[str]) -> list[float | None]:
            pending = inflight.events.event_ids.get(partition, {}) if inflight else {}
            return [
                float(pending[i]) if i in pending else ts
                for i, ts in zip(ids, stored(partition, ids), strict=True)
            ]

        return known

    def _finish(self, stop: threading.Event | None) -> None:
        """Wait for the commit in flight; on failure, apply that batch again synchronously
        and raise :class:`_InflightFailed` (whatever was computed on top of it is void)."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        try:
            inflight.future.result()
        except Exception as exc:  # noqa: BLE001 - every failure takes the safe, synchronous path
            log.info("pipelined commit failed (%s); applying the batch again", exc)
            self.cache.clear()
            self.apply_messages(inflight.messages, stop, inflight.rejected)
            raise _InflightFailed from None
        self._landed(inflight.last, inflight.events, inflight.started)
