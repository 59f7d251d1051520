"""The batch planner: from polled messages to the one atomic write that applies them.

Both worker drivers plan through it: the synchronous one (:class:`streams.worker.runtime.Worker`)
and the pipelined one (:class:`streams.worker.pipelined.PipelinedWorker`). They differ only in
where the checkpoint, the known event ids and the state come from (the store, or what the
commit in flight will leave there) and in when the writes are committed.

1. :meth:`BatchPlanner.screen` decodes what the checkpoint says is not applied yet, and
   dead-letters each bad, late or re-sent message once (flushed before anything is written);
2. :meth:`BatchPlanner.compute` turns the screened events into every processor's writes, the
   event ids and the checkpoint, guarded by the offsets the batch was screened against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from features.batch import WriteBatch
from features.errors import InvalidEventError
from features.keys import Keys
from features.store import PendingCommits, Store
from streams.io.dead_letter import DeadLetterPolicy
from streams.io.transport import RawMessage, TopicPartition
from streams.schema import EventValidator, Impression, Interaction, Item
from streams.settings import TopicSettings, WorkerSettings
from streams.worker.dedup import Candidate, EventIdFilter, KnownIds
from streams.worker.processors import BatchReads, EventBatch, Processor
from streams.worker.stats import WorkerStats

#: A message's place: its partition and offset.
MessageAt = tuple[TopicPartition, int]
#: Offsets (or event-time watermarks) per partition.
PartitionMarks = dict[TopicPartition, int]

#: Longest event time a partition's feeds wait for its clicks to catch up (see
#: :meth:`BatchPlanner.feedback_clocks`); within the records' lifetime (streams/worker/feedback.py).
CLICKS_IDLE_MAX_MS = 3_600_000


def last_offsets(messages: Sequence[RawMessage]) -> PartitionMarks:
    """The highest offset of each partition in ``messages``."""
    last: PartitionMarks = {}
    for msg in messages:
        tp = (msg.topic, msg.partition)
        last[tp] = max(msg.offset, last.get(tp, -1))
    return last


def read_checkpoint(
    store: Store, keys: Keys, topics: Sequence[str]
) -> tuple[PartitionMarks, PartitionMarks]:
    """Last applied offset and event-time watermark of each partition, as stored (what
    :meth:`BatchPlanner.compute` writes), once every commit a crash left half-way is
    finished: the state read next must hold everything the checkpoint says is applied."""
    if isinstance(store, PendingCommits):
        store.settle()
    names = [k for t in topics for k in (keys.applied_offsets(t), keys.watermarks(t))]
    tables = store.hgetall_many(names)
    offsets: PartitionMarks = {}
    watermarks: PartitionMarks = {}
    for n, topic in enumerate(topics):
        for partition, offset in tables[2 * n].items():
            offsets[(topic, int(partition))] = int(offset)
        for partition, mark in tables[2 * n + 1].items():
            watermarks[(topic, int(partition))] = int(mark)
    return offsets, watermarks


class BatchPlanner:
    """Screens a batch's messages into events and computes the batch's guarded writes."""

    def __init__(
        self,
        *,
        keys: Keys,
        processors: Sequence[Processor],
        validator: EventValidator,
        dead_letter: DeadLetterPolicy,
        topics: TopicSettings,
        settings: WorkerSettings,
        stats: WorkerStats,
    ) -> None:
        self.keys = keys
        self.processors = list(processors)
        self.validator = validator
        self.dead_letter = dead_letter
        self.topics = topics
        self.settings = settings
        self.stats = stats
        self.kinds: dict[str, type[Any]] = {
            topics.interactions: Interaction,
            topics.items: Item,
            topics.impressions: Impression,
        }
        self.event_ids = EventIdFilter(keys, topics.interactions, settings.dedup_window_ms)

    @property
    def inputs(self) -> list[str]:
        """The topics a worker applies."""
        return sorted(self.kinds)

    def screen(
        self,
        messages: Sequence[RawMessage],
        applied: PartitionMarks,
        watermarks: PartitionMarks,
        *,
        rejected: set[MessageAt],
        known: KnownIds,
        stored_watermarks: Callable[[list[str]], PartitionMarks],
        now_ms: int,
    ) -> EventBatch:
        """Decode the messages past ``applied``; dead-letter each bad one, and each re-sent
        event id (``known`` tells which ids a partition applied), once: ``rejected`` holds
        those already sent and receives the new ones. ``watermarks`` advances in place to
        the batch's event times; ``stored_watermarks`` answers for partitions it lacks."""
        events = EventBatch()
        interactions: list[tuple[RawMessage, Interaction, int]] = []
        # Sent once the store has answered which ids are known: a read that fails leaves
        # nothing half dead-lettered (the pipelined worker then redoes the whole batch).
        rejects: list[tuple[RawMessage, str]] = []
        for msg in messages:
            tp = (msg.topic, msg.partition)
            if msg.offset <= applied.get(tp, -1):
                self.stats.skipped_duplicates += 1
                continue
            if (tp, msg.offset) in rejected:
                continue
            reason = self._decode_into(events, msg, now_ms, watermarks, interactions)
            if reason is not None:
                rejects.append((msg, reason))
        rejects.extend(self._screen_resent(events, interactions, known))
        for msg, reason in rejects:
            self.reject(msg, reason)
            rejected.add(((msg.topic, msg.partition), msg.offset))
        self.dead_letter.flush()
        events.impression_clocks = self.feedback_clocks(messages, watermarks, stored_watermarks)
        return events

    def compute(
        self,
        events: EventBatch,
        last: PartitionMarks,
        applied: PartitionMarks,
        watermarks: PartitionMarks,
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

    def reject(self, msg: RawMessage, reason: str) -> None:
        """Dead-letter one message with its reason (sent at the next flush)."""
        self.dead_letter.reject(msg, reason)
        self.stats.dead_lettered += 1

    def feedback_clocks(
        self,
        messages: Sequence[RawMessage],
        watermarks: PartitionMarks,
        stored_watermarks: Callable[[list[str]], PartitionMarks],
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
            for tp, mark in stored_watermarks([imp, clicks]).items():
                marks.setdefault(tp, mark)
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

    def _screen_resent(
        self,
        events: EventBatch,
        interactions: list[tuple[RawMessage, Interaction, int]],
        known: KnownIds,
    ) -> list[tuple[RawMessage, str]]:
        """Add the interactions to ``events`` but for re-sent event ids; return those."""
        if self.event_ids.enabled:
            candidates = [
                Candidate(msg.partition, e.event_id, e.ts, mark) for msg, e, mark in interactions
            ]
            repeats = self.event_ids.duplicates(candidates, known)
        else:  # dedup off: no per-event work on the hot path
            repeats = [False] * len(interactions)
        rejects: list[tuple[RawMessage, str]] = []
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
        return rejects

    def _decode_into(
        self,
        events: EventBatch,
        msg: RawMessage,
        now_ms: int,
        watermarks: PartitionMarks,
        interactions: list[tuple[RawMessage, Interaction, int]],
    ) -> str | None:
        """Append the message's event to ``events`` (an interaction to ``interactions``, with
        its partition's event time, to be screened for re-sends); return why it is rejected
        instead."""
        kind = self.kinds.get(msg.topic)
        if kind is None:
            return f"no processor for topic {msg.topic!r}"
        try:
            event = self.validator.decode(kind, msg.value, now_ms=now_ms)
        except InvalidEventError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - no message may stop the worker
            return f"undecodable: {type(exc).__name__}: {exc}"
        if kind is Item:
            events.items.append(event)
            return None
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
        return None
