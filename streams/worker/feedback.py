"""The feedback processor: served feeds joined to clicks teach the bandit and the ranker.

Impressions open a record per served feed; reward-type interactions mark the clicked slot
(by ``request_id``, else by the user's latest open feed that showed the item); when an
impressions partition's event time passes a feed's attribution window, the feed is
finalised and every slot becomes one labelled example. The bandit counts one pull per slot
of the source that filled it; the ranker learns from the features the server logged.

The ranker is kept in one part per impressions partition: a partition has one owner at a
time, so no two workers ever write the same part, and its writes commit with the
partition's offset like all other state. Servers average the parts.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from features.attribution import (
    Attribution,
    Labelled,
    OpenImpression,
    OpenSlot,
    decode_many,
    pack_features,
    parse_pending,
    pending_member,
)
from features.bandit import Outcome, SourceBandit
from features.batch import WriteBatch
from features.keys import Keys
from features.ranker import OnlineRanker, RankerStore, RankerWeights, preference_pairs
from features.settings import LearningSettings
from streams.schema import Impression, Interaction
from streams.worker.processors import BatchReads, EventBatch

log = logging.getLogger(__name__)

#: Most feeds one partition finalises per batch; the rest wait for the next batch.
MAX_FINALISED_PER_BATCH = 20_000


def ranker_part(partition: int) -> str:
    """The ranker part a partition of the impressions topic owns."""
    return f"p{partition}"


def open_record(impression: Impression) -> OpenImpression:
    """What the worker keeps of a served feed until its window closes."""
    return OpenImpression(
        impression.request_id,
        impression.user_id,
        impression.ts,
        impression.segment or "default",
        [
            OpenSlot(s.item_id, s.source, s.position, s.propensity, pack_features(s.features))
            for s in impression.slots
        ],
        list(impression.feature_names or []),
    )


@dataclass
class FeedbackStats:
    """Counters of what the join did, for metrics and the dashboard."""

    opened: int = 0
    duplicates: int = 0
    attributed: int = 0
    pending: int = 0  # clicks waiting for their impression (some never find one)
    finalised: int = 0
    examples: int = 0


class FeedbackProcessor:
    """Impressions + clicks → open records, bandit counts and ranker parts."""

    name = "feedback"

    def __init__(self, keys: Keys, settings: LearningSettings) -> None:
        self.keys = keys
        self.settings = settings
        self.rewards = frozenset(settings.reward_types)
        self.attribution = Attribution(
            keys, window_s=settings.attribution_window_s, max_open=settings.max_open_impressions
        )
        self.bandit = SourceBandit(
            keys,
            half_life_s=settings.bandit_half_life_s,
            prior_alpha=settings.bandit_prior_alpha,
            prior_beta=settings.bandit_prior_beta,
        )
        self.rankers = RankerStore(keys)
        self.stats = FeedbackStats()

    def apply(self, events: EventBatch, reads: BatchReads, batch: WriteBatch) -> None:
        """Open, attribute, finalise and learn, in that order."""
        clicks = [e for e in events.interactions if e.type in self.rewards]
        if not events.impressions and not clicks and not events.impression_clocks:
            return
        store = reads.store
        records, opened = self._open(events.impressions, clicks, reads, batch)
        dirty = self._attribute_pending(opened, reads, batch)
        dirty |= self._attribute(clicks, records, reads, batch)
        labelled: list[Labelled] = []
        finalised: set[str] = set()
        for partition, clock in sorted(events.impression_clocks.items()):
            due_key = self.keys.impressions_due(partition)
            # Feeds opened by this very batch are not in the stored due set yet.
            window_ms = self.attribution.window_ms
            ids = self._due(reads, due_key, clock) + [
                r.request_id
                for p, imp in events.impressions
                if p == partition
                and (r := records.get(imp.request_id)) is not None
                and r.ts_ms + window_ms <= clock
            ]
            ids = list(dict.fromkeys(ids))
            self._load(ids, records, reads)
            ready = [records[i] for i in ids if i in records]
            # Records whose TTL ran out leave only their due entry behind: drop it.
            lost = [i for i in ids if i not in records]
            if lost:
                batch.zrem(due_key, lost)
            examples = self.attribution.finalise(batch, partition, ready)
            finalised.update(r.request_id for r in ready)
            self._learn(partition, examples, reads, batch)
            labelled.extend(examples)
        for request_id in sorted(dirty - finalised):
            self.attribution.save(batch, records[request_id])
        if labelled:
            self.bandit.add(
                batch,
                reads.landmarks,
                lambda: reads.read(lambda: self.bandit.segments(store)),
                [
                    Outcome(x.segment, x.source, 1.0 if x.clicked else 0.0, x.ts_ms)
                    for x in labelled
                ],
            )
        self.stats.finalised += len(finalised)

    def _open(
        self,
        impressions: list[tuple[int, Impression]],
        clicks: list[Interaction],
        reads: BatchReads,
        batch: WriteBatch,
    ) -> tuple[dict[str, OpenImpression], list[OpenImpression]]:
        """Open the batch's new feeds; return every record the batch needs, by request id,
        and the records opened."""
        records: dict[str, OpenImpression] = {}
        opened: list[OpenImpression] = []
        wanted = [imp.request_id for _, imp in impressions]
        wanted += [c.request_id for c in clicks if c.request_id]
        self._load(wanted, records, reads)
        for partition, impression in impressions:
            if impression.request_id in records:
                self.stats.duplicates += 1  # a producer retry, or a replayed request id
                continue
            record = open_record(impression)
            records[record.request_id] = record
            self.attribution.open(batch, partition, record)
            opened.append(record)
            self.stats.opened += 1
        return records, opened

    def _attribute_pending(
        self, opened: list[OpenImpression], reads: BatchReads, batch: WriteBatch
    ) -> set[str]:
        """Clicks that came before their feed's impression, matched to the feeds now opened."""
        dirty: set[str] = set()
        if not opened:
            return dirty
        by_user: dict[str, list[OpenImpression]] = defaultdict(list)
        for record in opened:
            by_user[record.user_id].append(record)
        users = sorted(by_user)
        keys = [self.keys.pending_clicks(u) for u in users]
        rows = reads.read(lambda: reads.store.top_many(keys, self.settings.max_open_impressions))
        for user, key, row in zip(users, keys, rows, strict=True):
            mine = {r.request_id: r for r in by_user[user]}
            done: list[str] = []
            for member, score in sorted(row, key=lambda pair: (pair[1], pair[0])):
                request_id, item_id, ts = parse_pending(member, score)
                found: OpenImpression | None = (
                    mine.get(request_id)
                    if request_id is not None
                    else self.attribution.match(by_user[user], item_id, ts)
                )
                if found is None:
                    continue
                done.append(member)
                if self.attribution.click(found, item_id, ts):
                    dirty.add(found.request_id)
                    self.stats.attributed += 1
                    self.stats.pending -= 1
            if done:
                batch.zrem(key, done)
        return dirty

    def _attribute(
        self,
        clicks: list[Interaction],
        records: dict[str, OpenImpression],
        reads: BatchReads,
        batch: WriteBatch,
    ) -> set[str]:
        """Mark clicked slots; return the request ids of the records that changed. A click
        no open feed explains waits for one (Kafka does not order the two topics)."""
        dirty: set[str] = set()
        unmatched: list[Interaction] = []
        for click in clicks:
            record = records.get(click.request_id) if click.request_id else None
            if record is not None and record.user_id == click.user_id:
                if self.attribution.click(record, click.item_id, click.ts):
                    dirty.add(record.request_id)
                    self.stats.attributed += 1
                continue
            unmatched.append(click)
        if not unmatched:
            return dirty
        users = sorted({c.user_id for c in unmatched})
        index_keys = [self.keys.impressions(u) for u in users]
        rows = reads.read(
            lambda: reads.store.top_many(index_keys, self.settings.max_open_impressions)
        )
        open_ids = {u: [r for r, _ in row] for u, row in zip(users, rows, strict=True)}
        self._load([r for ids in open_ids.values() for r in ids], records, reads)
        by_user: dict[str, list[OpenImpression]] = defaultdict(list)
        for record in records.values():
            by_user[record.user_id].append(record)
        waiting: dict[str, list[Interaction]] = defaultdict(list)
        for click in unmatched:
            if click.request_id is not None and click.request_id in records:
                continue  # its feed is known: the click is outside its window, or not its item
            record = self.attribution.match(by_user[click.user_id], click.item_id, click.ts)
            if record is None:
                waiting[click.user_id].append(click)
            elif self.attribution.click(record, click.item_id, click.ts):
                dirty.add(record.request_id)
                self.stats.attributed += 1
        for user, pended in waiting.items():
            self._pend(batch, user, pended)
        return dirty

    def _pend(self, batch: WriteBatch, user: str, clicks: list[Interaction]) -> None:
        """Park a user's unexplained clicks: one write, one trim and one expiry per user
        and batch (trimming once to the best ``max_open_impressions`` keeps what trimming
        after each click would)."""
        key = self.keys.pending_clicks(user)
        members = {pending_member(c.item_id, c.event_id, c.request_id): float(c.ts) for c in clicks}
        batch.zadd(key, members)
        batch.zkeeptop(key, self.settings.max_open_impressions)
        batch.expire(key, self.attribution.record_ttl_s)
        self.stats.pending += len(clicks)

    @staticmethod
    def _due(reads: BatchReads, due_key: str, clock: int) -> list[str]:
        """Request ids whose window closed by ``clock``, earliest first."""
        due = reads.read(lambda: reads.store.lowest(due_key, clock, MAX_FINALISED_PER_BATCH))
        return [request_id for request_id, _ in due]

    def _load(
        self, request_ids: Iterable[str], records: dict[str, OpenImpression], reads: BatchReads
    ) -> None:
        """Read the records ``records`` does not hold yet."""
        missing = sorted({r for r in request_ids if r not in records})
        if not missing:
            return
        raws = reads.read(lambda: reads.store.get_bytes([self.keys.impression(r) for r in missing]))
        records.update(decode_many(dict(zip(missing, raws, strict=True))))

    def _learn(
        self, partition: int, examples: list[Labelled], reads: BatchReads, batch: WriteBatch
    ) -> None:
        """Teach the partition's ranker part the preference pairs of the closed feeds."""
        pairs = preference_pairs(
            [(x.request_id, x.position, x.clicked, x.features) for x in examples]
        )
        if not pairs:
            return
        part = ranker_part(partition)
        parts = reads.read(lambda: self.rankers.load_parts(reads.store))
        ranker = OnlineRanker.restore(
            parts.get(part, RankerWeights.prior()),
            learning_rate=self.settings.ranker_learning_rate,
            l2=self.settings.ranker_l2,
        )
        for preferred, other in pairs:
            try:
                ranker.learn_pair(preferred, other)
            except ValueError:
                # A feature no float can carry: one pair lost, never the worker.
                log.warning("ranker pair with a non-finite feature skipped")
        weights = ranker.export()
        self.rankers.save(batch, part, weights)
        self.stats.examples += len(pairs)
