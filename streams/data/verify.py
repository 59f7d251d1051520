"""Recompute the state from the log in memory and diff it against the live store.

The recomputation applies the same messages (same topics, partitions and offsets, up to what
the store's offset table says is applied) through the same processors, in the order the
catalog gate gives a live worker: the catalog first, then the other topics merged by record
time, each partition in its own order. Forward-decayed values are compared as read at one
instant, so the landmarks the two runs picked do not matter, and embedding states as numbers
(batches cut elsewhere sum in another order).

One documented difference is not a loss: a co-visitation row keeps its strongest
``covisitation_neighbours`` and is trimmed at batch ends, so which weak neighbours survive
depends on where batches were cut. Rows that reached the bound on either side are counted as
``trimmed`` and not compared.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from features.covisitation import Covisitation
from features.embeddings import EmbeddingState
from features.keys import Keys
from features.settings import FeatureSettings
from features.store import Store
from features.trending import Trending
from streams.io.transport import RawMessage, TopicPartition

#: Per-partition bookkeeping: it depends on how a transport partitions, not on the events.
PARTITION_KINDS = frozenset({"offsets", "watermarks", "workers", "landmarks", "eids"})

#: Relative tolerance of float comparisons (sums taken in another order).
REL_TOL = 1e-6


def readable_state(
    store: Store, keys: Keys, features: FeatureSettings, now_s: float
) -> dict[str, Any]:
    """Every key of the namespace, with forward-decayed sets read as decayed values at
    ``now_s`` (so the result does not depend on which landmark a run happened to pick)."""
    dump: Mapping[str, Any] = store.dump(keys.prefix)
    landmarks = store.hgetall(keys.landmarks())
    trending = Trending(keys, features.half_lives_s, features.event_weights)
    covisitation = Covisitation.from_settings(keys, features)
    out: dict[str, Any] = {}
    for key, value in dump.items():
        kind = key[len(keys.prefix) :].split(":")[0]
        if kind in PARTITION_KINDS:
            continue
        if kind == "trend":
            half_life = float(key[len(keys.prefix) :].split(":")[1])
            value = dict(trending.decayed(list(value.items()), landmarks, half_life, now_s))
        elif kind in ("sess", "user"):
            state = EmbeddingState.from_bytes(value, features.embedding_dim)
            value = {
                "last_ts_ms": state.last_ts_ms,
                "count": state.count,
                "mass": state.mass,
                "total": [float(x) for x in state.total],
            }
        elif kind == "covis":
            (row,) = covisitation.decayed([list(value.items())], landmarks, now_s)
            value = dict(row)
        out[key] = value
    return out


def family_of(key: str, prefix: str) -> str:
    """The key family a key belongs to, e.g. ``trend:cat`` or ``seen``.

    Examples:
        >>> family_of("{sr}:trend:3600:cat:news", "{sr}:"), family_of("{sr}:seen:u1", "{sr}:")
        ('trend:cat', 'seen')
    """
    parts = key[len(prefix) :].split(":")
    if parts[0] == "trend":
        return "trend:cat" if len(parts) > 2 and parts[2] == "cat" else "trend:global"
    return parts[0]


@dataclass
class FamilyDiff:
    """How one key family compares: keys, and how many hold less or more than the truth."""

    keys_compared: int = 0
    keys_different: int = 0
    lost: int = 0
    doubled: int = 0
    trimmed: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class StateDiff:
    """Every family's comparison."""

    families: dict[str, FamilyDiff] = field(default_factory=dict)

    def totals(self) -> dict[str, int]:
        """The sums over families, as the JSON line reports them."""
        fams = self.families.values()
        return {
            "families": len(self.families),
            "keys_compared": sum(f.keys_compared for f in fams),
            "keys_different": sum(f.keys_different for f in fams),
            "lost": sum(f.lost for f in fams),
            "doubled": sum(f.doubled for f in fams),
            "trimmed": sum(f.trimmed for f in fams),
        }


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-9)


def _compare_value(truth: Any, live: Any) -> tuple[bool, bool]:
    """(live holds less somewhere, live holds more somewhere) for one key's values."""
    if isinstance(truth, dict) and "total" in truth and isinstance(live, dict):
        less = live["count"] < truth["count"]
        more = live["count"] > truth["count"]
        same = (
            live["last_ts_ms"] == truth["last_ts_ms"]
            and _close(live["mass"], truth["mass"])
            and all(
                math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-5)
                for x, y in zip(live["total"], truth["total"], strict=True)
            )
        )
        return (less or (not same and not more), more)
    if isinstance(truth, dict) and isinstance(live, dict):
        less = more = False
        for member in truth.keys() | live.keys():
            t, v = truth.get(member), live.get(member)
            if t == v:
                continue
            if isinstance(t, float) and isinstance(v, float):
                if _close(t, v):
                    continue
                less, more = less or v < t, more or v > t
            elif v is None:
                less = True
            elif t is None:
                more = True
            else:
                less = True  # a different value: the truth's is missing
        return less, more
    return (truth != live, False)


def diff_states(
    truth: Mapping[str, Any], live: Mapping[str, Any], prefix: str, covis_bound: int
) -> StateDiff:
    """Compare two :func:`readable_state` results key by key, per family."""
    out: dict[str, FamilyDiff] = defaultdict(FamilyDiff)
    for key in sorted(truth.keys() | live.keys()):
        name = family_of(key, prefix)
        fam = out[name]
        fam.keys_compared += 1
        t, v = truth.get(key), live.get(key)
        if name == "covis" and any(isinstance(x, dict) and len(x) >= covis_bound for x in (t, v)):
            fam.trimmed += 1
            continue
        if t is None:
            less, more = False, True
        elif v is None:
            less, more = True, False
        else:
            less, more = _compare_value(t, v)
        if less or more:
            fam.keys_different += 1
            fam.lost += less
            fam.doubled += more
            if len(fam.examples) < 3:
                fam.examples.append(key)
    return StateDiff(dict(sorted(out.items())))


def live_order(messages: Iterable[RawMessage], items_topic: str) -> list[RawMessage]:
    """The order a live worker applies ``messages`` in: the catalog first, then the other
    topics merged by record time (ties by topic, partition, offset), each partition in order.

    Examples:
        >>> m = lambda t, p, o, ts: RawMessage(t, p, o, None, None, ts)
        >>> [(x.topic, x.partition) for x in live_order(
        ...     [m("clicks", 0, 0, 5), m("clicks", 1, 0, 1), m("items", 0, 0, 9)], "items")]
        [('items', 0), ('clicks', 1), ('clicks', 0)]
    """
    parts: dict[TopicPartition, list[RawMessage]] = defaultdict(list)
    for msg in messages:
        parts[(msg.topic, msg.partition)].append(msg)
    for log in parts.values():
        log.sort(key=lambda m: m.offset)
    items = [m for tp in sorted(parts) if tp[0] == items_topic for m in parts[tp]]
    others = [parts[tp] for tp in sorted(parts) if tp[0] != items_topic]
    merged = heapq.merge(*others, key=lambda m: (m.timestamp_ms, m.topic, m.partition, m.offset))
    return items + list(merged)


class RecordedSource:
    """A :class:`streams.io.transport.MessageSource` over messages held in memory."""

    def __init__(self, messages: list[RawMessage]) -> None:
        self.messages = messages
        self.position = 0
        self.generation = 0

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[RawMessage]:
        """The next ``max_messages`` messages."""
        batch = self.messages[self.position : self.position + max_messages]
        self.position += len(batch)
        return batch

    def commit(self, next_offsets: Mapping[TopicPartition, int]) -> None:
        """Nothing to record."""

    def lag(self) -> dict[TopicPartition, int]:
        """What is left, under one pseudo-partition."""
        return {("recorded", 0): len(self.messages) - self.position}

    def close(self) -> None:
        """Nothing to release."""
