"""A batch of state writes, built by pure processors and applied atomically by a store."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ZIncrBy:
    """Add each member's amount to its score (ZINCRBY per member)."""

    key: str
    amounts: dict[str, float]


@dataclass(frozen=True, slots=True)
class ZAdd:
    """Set scores of members (creating them); with ``greater``, only raise existing scores."""

    key: str
    scores: Mapping[str, float]
    greater: bool = False


@dataclass(frozen=True, slots=True)
class ZRem:
    """Remove members."""

    key: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ZKeepTop:
    """Keep only the ``keep`` highest-scored members (ties broken as Redis breaks them)."""

    key: str
    keep: int


@dataclass(frozen=True, slots=True)
class ZRemBelow:
    """Remove the members scored below ``score`` (ZREMRANGEBYSCORE -inf (score)."""

    key: str
    score: int


@dataclass(frozen=True, slots=True)
class ZScale:
    """Multiply every score by ``factor`` (a decay landmark rotation)."""

    key: str
    factor: float


@dataclass(frozen=True, slots=True)
class ZScalePrefix:
    """Multiply every score of every sorted set whose key starts with ``prefix`` (a landmark
    rotation of a family with a key per item, such as co-visitation); atomic with the batch."""

    prefix: str
    factor: float


@dataclass(frozen=True, slots=True)
class HSet:
    """Set fields of a hash."""

    key: str
    fields: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class HSetNX:
    """Set hash fields that are not set yet."""

    key: str
    fields: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class SetBytes:
    """Set a plain value, with a time to live in seconds when ``ttl_s`` is given."""

    key: str
    value: bytes
    ttl_s: int | None = None


@dataclass(frozen=True, slots=True)
class Expire:
    """Expire a key after ``seconds``."""

    key: str
    seconds: int


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove a key."""

    key: str


Op = (
    ZIncrBy
    | ZAdd
    | ZRem
    | ZRemBelow
    | ZKeepTop
    | ZScale
    | ZScalePrefix
    | HSet
    | HSetNX
    | SetBytes
    | Expire
    | Delete
)


class WriteBatch:
    """Ordered state writes; increments to the same (key, member) are merged into one.

    Merging matters: a batch of 5,000 views of a few hundred hot items becomes a few hundred
    ``ZINCRBY`` calls, not 5,000.

    Examples:
        >>> b = WriteBatch()
        >>> b.zincrby("k", "a", 1.0); b.zincrby("k", "b", 2.0); b.zincrby("k", "a", 0.5)
        >>> [op.amounts for op in b]
        [{'a': 1.5, 'b': 2.0}]
    """

    def __init__(self) -> None:
        self._ops: list[Op] = []
        # key -> the amounts of its open ZIncrBy, which later increments merge into
        self._open_incr: dict[str, dict[str, float]] = {}
        self.guards: dict[tuple[str, str], str | None] = {}

    def guard(self, key: str, field: str, expected: str | None) -> None:
        """Commit only if hash field ``key.field`` still holds ``expected`` (None: unset).

        Writers that derive values from shared state they read (a decay landmark) guard it,
        so a concurrent change makes the store raise ConflictError instead of mixing frames.
        """
        self.guards[(key, field)] = expected

    def zincrby(self, key: str, member: str, amount: float) -> None:
        """Add to a member's score, merged with earlier increments of the same member."""
        amounts = self._open_incr.get(key)
        if amounts is None:
            amounts = self._open_incr[key] = {}
            self._ops.append(ZIncrBy(key, amounts))
        amounts[member] = amounts.get(member, 0.0) + amount

    def zincrby_many(self, key: str, amounts: Mapping[str, float]) -> None:
        """:meth:`zincrby` for many members of one key."""
        merged = self._open_incr.get(key)
        if merged is None:
            merged = self._open_incr[key] = {}
            self._ops.append(ZIncrBy(key, merged))
        for member, amount in amounts.items():
            merged[member] = merged.get(member, 0.0) + amount

    def zadd(self, key: str, scores: Mapping[str, float], *, greater: bool = False) -> None:
        """Set members' scores; ``greater`` keeps an existing higher score (ZADD GT)."""
        if scores:
            self._append(ZAdd(key, dict(scores), greater))

    def zrem(self, key: str, members: Sequence[str]) -> None:
        """Remove members from a sorted set."""
        if members:
            self._append(ZRem(key, tuple(members)))

    def zrem_below(self, key: str, score: int) -> None:
        """Remove the members of a sorted set scored below ``score``."""
        self._append(ZRemBelow(key, score))

    def zkeeptop(self, key: str, keep: int) -> None:
        """Trim a sorted set to its ``keep`` best members."""
        self._append(ZKeepTop(key, keep))

    def zscale(self, key: str, factor: float) -> None:
        """Multiply every score of a sorted set."""
        self._append(ZScale(key, factor))

    def zscale_prefix(self, prefix: str, factor: float) -> None:
        """Multiply every score of every sorted set under ``prefix``."""
        self._append(ZScalePrefix(prefix, factor))

    def hset(self, key: str, fields: Mapping[str, str]) -> None:
        """Set hash fields."""
        if fields:
            self._append(HSet(key, dict(fields)))

    def hsetnx(self, key: str, fields: Mapping[str, str]) -> None:
        """Set hash fields only where they are not set yet."""
        if fields:
            self._append(HSetNX(key, dict(fields)))

    def set_bytes(self, key: str, value: bytes, *, ttl_s: int | None = None) -> None:
        """Set a plain value (SET, or SET … EX when ``ttl_s`` is given)."""
        self._append(SetBytes(key, value, ttl_s))

    def expire(self, key: str, seconds: int) -> None:
        """Give a key a time to live."""
        self._append(Expire(key, seconds))

    def delete(self, key: str) -> None:
        """Remove a key."""
        self._append(Delete(key))

    def add(self, op: Op) -> None:
        """Append a built op as it is (routing a batch's ops into per-slot batches)."""
        self._append(op)

    def _append(self, op: Op) -> None:
        # A later increment must not merge across a write that reads or resets the same key.
        if isinstance(op, ZScalePrefix):
            for key in [k for k in self._open_incr if k.startswith(op.prefix)]:
                del self._open_incr[key]
        else:
            self._open_incr.pop(op.key, None)
        self._ops.append(op)

    def __iter__(self) -> Iterator[Op]:
        return iter(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def __bool__(self) -> bool:
        return bool(self._ops) or bool(self.guards)
