"""Where each logical key is stored when a namespace is split into shards (Redis Cluster).

A shard is one hash tag, ``{<namespace>#<n>}``, so one Redis Cluster slot. Writers and
readers keep using the logical keys of :class:`features.keys.Keys`. :class:`ShardLayout`
maps them by the rule of their kind (:data:`features.keys.ENTITY_KINDS`,
:data:`features.keys.SPLIT_KINDS`): the state of one user, item, request or partition lives
in the shard of its id (``crc32(id) mod shards``); a sorted set over all items is one set per
shard, holding the items of that shard; everything else is *home* state, under the
namespace's own tag. Each item lives in exactly one shard, so the top-K of a split set is the
top-K of the shards' top-Ks merged.

Why shards rather than a tag per user and per item: a worker's batch commits one script per
slot it writes (see :class:`RoutedBatch`). A tag per id would make a batch of 5,000 events
thousands of scripts; a fixed number of shards keeps it at most ``shards + 1``, and still
spreads the slots over the cluster's nodes.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from features.batch import (
    Delete,
    Expire,
    HSet,
    HSetNX,
    Op,
    SetBytes,
    WriteBatch,
    ZAdd,
    ZIncrBy,
    ZKeepTop,
    ZRem,
    ZRemBelow,
    ZScale,
    ZScalePrefix,
)
from features.keys import ENTITY_KINDS, SPLIT_KINDS, kind_and_id

#: Where a logical key lives: the home tag, one shard, or every shard (a split set).
HOME, SPLIT = -1, -2

#: Kinds of bookkeeping keys the sharded commit keeps (not part of the logical state).
SLOT_OFFSETS, PREPARED, PENDING, META = "slot-offsets", "prepared", "pending", "meta"
BOOKKEEPING = frozenset({SLOT_OFFSETS, PREPARED, PENDING, META})

#: Keys whose placement a layout remembers (about 100 bytes each) before it starts afresh.
_MAX_KNOWN = 500_000

#: Kind of the checkpoint table whose writes every shard keeps a copy of.
OFFSETS = "offsets"


@dataclass
class RoutedBatch:
    """A batch's writes grouped by slot, for the sharded commit.

    ``home`` holds the guards and the writes to home keys; ``shards`` each shard's writes.
    Ops keep their logical keys (renaming every op would cost more than routing it), except
    a split set's parts, which name their stored keys: :meth:`ShardLayout.to_stored` names
    any of them as stored. ``marks`` is the batch's checkpoint (``topic/partition`` → last
    applied offset): each shard keeps its own copy of it, written with the shard's writes, so
    a shard that already holds the batch skips it. ``rotates`` tells that a decay landmark
    moves (a shard's scores are rescaled), which no other batch may overlap.
    """

    home: WriteBatch
    shards: dict[int, WriteBatch] = field(default_factory=dict)
    marks: dict[str, str] = field(default_factory=dict)
    rotates: bool = False


class ShardLayout:
    """The stored names of a namespace's keys over ``shards`` shards.

    Examples:
        >>> layout = ShardLayout("sr", 4)
        >>> layout.place("{sr}:seen:u1"), layout.place("{sr}:trend:60:global")
        (2, -2)
        >>> layout.stored("{sr}:seen:u1"), layout.stored("{sr}:landmarks")
        ('{sr#2}:seen:u1', '{sr}:landmarks')
        >>> layout.logical("{sr#2}:seen:u1")
        '{sr}:seen:u1'
    """

    def __init__(self, namespace: str, shards: int) -> None:
        if shards < 1:
            raise ValueError(f"shards must be at least 1, not {shards}")
        self.namespace, self.shards = namespace, shards
        self.home_tag = "{" + namespace + "}"
        self.tags = [self.shard_tag(s) for s in range(shards)]
        self._home_prefix = self.home_tag + ":"
        # key -> (place, stored name or None for a split set): the same users' and items'
        # keys come back batch after batch, and parsing them is most of routing's cost.
        self._known: dict[str, tuple[int, str | None]] = {}

    def shard_tag(self, shard: int) -> str:
        """The hash tag of one shard."""
        return "{" + f"{self.namespace}#{shard}" + "}"

    def shard_of(self, ident: str) -> int:
        """The shard of a user, item, request or partition id."""
        return zlib.crc32(ident.encode()) % self.shards

    def place(self, key: str) -> int:
        """A logical key's shard; :data:`HOME` or :data:`SPLIT`."""
        return self._lookup(key)[0]

    def stored(self, key: str, shard: int | None = None) -> str:
        """Where a logical key is stored (a split set's part in ``shard``)."""
        _place, stored = self._lookup(key)
        if stored is not None:
            return stored
        if shard is None:
            raise ValueError(f"{key!r} is split over the shards: name one")
        return self.tags[shard] + key[len(self.home_tag) :]

    def _lookup(self, key: str) -> tuple[int, str | None]:
        known = self._known.get(key)
        if known is not None:
            return known
        tag, kind, ident = kind_and_id(key)
        if tag != self.home_tag:
            raise ValueError(f"{key!r} is not a key of namespace {self.namespace!r}")
        if kind in ENTITY_KINDS:
            place = self.shard_of(ident)
            known = (place, self.tags[place] + key[len(tag) :])
        elif kind in SPLIT_KINDS:
            known = (SPLIT, None)
        else:
            known = (HOME, key)
        if len(self._known) >= _MAX_KNOWN:
            self._known.clear()
        self._known[key] = known
        return known

    def to_stored(self, key: str) -> str:
        """Where a routed op's key is stored (a logical key, or a split set's stored part)."""
        if key.startswith(self._home_prefix):
            return self.stored(key)
        return key

    def parts(self, key: str) -> list[str]:
        """Every stored key holding part of a logical key (one, unless it is split)."""
        if self.place(key) == SPLIT:
            return [self.stored(key, s) for s in range(self.shards)]
        return [self.stored(key)]

    def member_key(self, key: str, member: str) -> str:
        """The stored key holding ``member`` of a logical sorted set."""
        _place, stored = self._lookup(key)
        return stored if stored is not None else self.stored(key, self.shard_of(member))

    def logical(self, stored: str) -> str | None:
        """The logical key a stored key is (part of); None for the commit's bookkeeping."""
        tag, kind, _ = kind_and_id(stored)
        if kind in BOOKKEEPING:
            return None
        return self.home_tag + stored[len(tag) :]

    def prefixes(self, logical_prefix: str) -> list[str]:
        """The stored prefixes that together hold every key under ``logical_prefix``."""
        if not logical_prefix.startswith(self.home_tag):
            raise ValueError(f"{logical_prefix!r} is not a prefix of namespace {self.namespace!r}")
        rest = logical_prefix[len(self.home_tag) :]
        return [self.home_tag + rest, *(tag + rest for tag in self.tags)]

    # --- bookkeeping keys of the sharded commit ---------------------------------------------

    def meta_key(self) -> str:
        """Hash recording the layout the namespace was written with (``shards``)."""
        return f"{self.home_tag}:{META}"

    def pending_key(self) -> str:
        """Hash of the batches decided but not yet applied in every shard."""
        return f"{self.home_tag}:{PENDING}"

    def slot_offsets_key(self, shard: int) -> str:
        """Hash of the checkpoint a shard holds (``topic/partition`` → offset)."""
        return f"{self.tags[shard]}:{SLOT_OFFSETS}"

    def prepared_key(self, shard: int, batch_id: str) -> str:
        """List holding a shard's share of one batch until it is applied."""
        return f"{self.tags[shard]}:{PREPARED}:{batch_id}"

    # --- routing a batch ----------------------------------------------------------------------

    def route(self, batch: WriteBatch) -> RoutedBatch:
        """Group a batch's writes by slot, in order; guards stay home (they are all on home
        hashes: the checkpoint and the landmarks)."""
        routed = RoutedBatch(home=WriteBatch())
        for (key, hash_field), expected in batch.guards.items():
            if self.place(key) != HOME:
                raise ValueError(f"guard on {key!r}: only home hashes can be guarded")
            routed.home.guard(key, hash_field, expected)
        for op in batch:
            for shard, stored_op in self._route_op(op):
                if shard == HOME:
                    routed.home.add(stored_op)
                    continue
                if isinstance(stored_op, ZScale | ZScalePrefix):
                    routed.rotates = True
                routed.shards.setdefault(shard, WriteBatch()).add(stored_op)
            if isinstance(op, HSet) and kind_and_id(op.key)[1] == OFFSETS:
                topic = kind_and_id(op.key)[2]
                routed.marks.update({f"{topic}/{p}": o for p, o in op.fields.items()})
        return routed

    def _route_op(self, op: Op) -> Iterable[tuple[int, Op]]:
        if isinstance(op, ZScalePrefix):
            tag, kind, _ = kind_and_id(op.prefix)
            if kind in ENTITY_KINDS:
                rest = op.prefix[len(tag) :]
                return [(s, ZScalePrefix(t + rest, op.factor)) for s, t in enumerate(self.tags)]
            return [(HOME, op)]
        place, stored = self._lookup(op.key)
        if stored is not None:
            return [(place, op)]
        match op:
            case ZIncrBy(key, amounts):
                return [
                    (s, ZIncrBy(self.stored(key, s), part))
                    for s, part in self._by_member(amounts).items()
                ]
            case ZAdd(key, scores, greater):
                return [
                    (s, ZAdd(self.stored(key, s), part, greater))
                    for s, part in self._by_member(scores).items()
                ]
            case ZRem(key, members):
                parts = self._by_member(dict.fromkeys(members, 0.0))
                return [(s, ZRem(self.stored(key, s), tuple(part))) for s, part in parts.items()]
            case ZRemBelow() | ZScale() | Expire() | Delete():
                return [(s, _with_key(op, self.stored(op.key, s))) for s in range(self.shards)]
        raise ValueError(f"{type(op).__name__} on {op.key!r}: a split set cannot take it")

    def _by_member(self, scores: Mapping[str, float]) -> dict[int, dict[str, float]]:
        out: dict[int, dict[str, float]] = {}
        for member, score in scores.items():
            out.setdefault(self.shard_of(member), {})[member] = score
        return out


def renamed(op: Op, to_stored: Callable[[str], str]) -> Op:
    """``op`` on its stored key (a prefix rescale is routed already)."""
    if isinstance(op, ZScalePrefix):
        return op
    key = to_stored(op.key)
    return op if key == op.key else _with_key(op, key)


def _with_key(op: Op, key: str) -> Op:
    """``op`` on another key."""
    match op:
        case ZIncrBy(_, amounts):
            return ZIncrBy(key, amounts)
        case ZAdd(_, scores, greater):
            return ZAdd(key, scores, greater)
        case ZRem(_, members):
            return ZRem(key, members)
        case ZRemBelow(_, score):
            return ZRemBelow(key, score)
        case ZKeepTop(_, keep):
            return ZKeepTop(key, keep)
        case ZScale(_, factor):
            return ZScale(key, factor)
        case HSet(_, fields):
            return HSet(key, fields)
        case HSetNX(_, fields):
            return HSetNX(key, fields)
        case SetBytes(_, value, ttl_s):
            return SetBytes(key, value, ttl_s)
        case Expire(_, seconds):
            return Expire(key, seconds)
        case Delete():
            return Delete(key)
    raise TypeError(f"unknown store op {op!r}")


def namespace_pattern(namespace: str) -> str:
    """A SCAN MATCH pattern of every stored key of a namespace, in any number of shards.

    Examples:
        >>> namespace_pattern("sr")
        '{sr[}#]*'
    """
    escaped = "".join("\\" + c if c in "[]?*\\" else c for c in namespace)
    return "{" + escaped + "[}#]*"


def merge_tops(parts: Sequence[Sequence[tuple[str, float]]], k: int) -> list[tuple[str, float]]:
    """The best ``k`` of several shards' tops, ordered as ZREVRANGE orders one set (score,
    then member bytes, both descending); exact because no member is in two shards.

    Examples:
        >>> merge_tops([[("a", 3.0), ("c", 1.0)], [("b", 2.0), ("d", 1.0)]], 3)
        [('a', 3.0), ('b', 2.0), ('d', 1.0)]
    """
    rows = heapq.merge(*parts, key=lambda row: (row[1], row[0].encode()), reverse=True)
    return [row for _, row in zip(range(k), rows, strict=False)]


def merge_lowest(
    parts: Sequence[Sequence[tuple[str, float]]], limit: int
) -> list[tuple[str, float]]:
    """The lowest ``limit`` of several shards' lowest, ascending (score, then member bytes)."""
    rows = heapq.merge(*parts, key=lambda row: (row[1], row[0].encode()))
    return [row for _, row in zip(range(limit), rows, strict=False)]
