"""Joining served feeds to clicks: open impressions, click attribution, window closing.

An impression stays *open* for the attribution window. A click marks its slot: by the
click's ``request_id`` when it has one, else by the user's latest open impression showing
that item. When the window closes (by the impressions partition's event time) the
impression is *finalised*: each slot becomes one labelled example, clicked or not, for the
bandit and the ranker. Learning only at finalisation gives every slot exactly one label,
with no early-positive bias and no double counting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import msgspec
import numpy as np
import orjson

from features.batch import WriteBatch
from features.keys import Keys


class OpenSlot(msgspec.Struct, array_like=True):
    """One served slot, as the worker keeps it until the window closes."""

    item_id: str
    source: str
    position: int
    propensity: float
    # float32 little-endian: a click's lookup decodes a user's open feeds, and bytes decode
    # without building a Python float per feature.
    features: bytes | None = None
    clicked: bool = False


class OpenImpression(msgspec.Struct, array_like=True):
    """A served feed whose attribution window is still open."""

    request_id: str
    user_id: str
    ts_ms: int
    segment: str
    slots: list[OpenSlot]
    feature_names: list[str] = []

    def slot_of(self, item_id: str) -> OpenSlot | None:
        """The first slot showing ``item_id``."""
        return next((s for s in self.slots if s.item_id == item_id), None)


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(OpenImpression)


def encode_open(record: OpenImpression) -> bytes:
    """msgpack bytes of an open impression."""
    return _ENCODER.encode(record)


def decode_open(raw: bytes) -> OpenImpression | None:
    """An open impression from its bytes; None for bytes that are not one."""
    try:
        return _DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


@dataclass(frozen=True, slots=True)
class Labelled:
    """One finalised slot: what was shown, how it was chosen, and whether it was clicked."""

    request_id: str
    user_id: str
    segment: str
    item_id: str
    source: str
    position: int
    propensity: float
    clicked: bool
    ts_ms: int
    features: dict[str, float] | None


class Attribution:
    """Writes and reads open impressions; all decisions are pure over decoded records.

    Examples:
        >>> from features.stores.memory_store import InMemoryStore
        >>> att, store, batch = Attribution(Keys("t"), window_s=60), InMemoryStore(), WriteBatch()
        >>> slots = [OpenSlot("a", "trending", 0, 0.5), OpenSlot("b", "fresh", 1, 0.5)]
        >>> imp = OpenImpression("r1", "u", 1_000, "new|web", slots)
        >>> att.open(batch, 0, imp)
        >>> att.click(imp, "b", 5_000)
        True
        >>> [(x.item_id, x.clicked) for x in att.finalise(batch, 0, [imp])]
        [('a', False), ('b', True)]
    """

    def __init__(self, keys: Keys, *, window_s: float, max_open: int = 50) -> None:
        self.keys = keys
        self.window_ms = int(window_s * 1000)
        self.max_open = max_open
        # Records outlive their window by a margin, so a lagging finaliser still finds them;
        # the TTL only collects what a lost partition never finalises.
        self.record_ttl_s = int(2 * window_s) + 3600

    def open(self, batch: WriteBatch, partition: int, record: OpenImpression) -> None:
        """Queue the writes that open ``record`` (from impressions ``partition``)."""
        self.save(batch, record)
        user_index = self.keys.impressions(record.user_id)
        batch.zadd(user_index, {record.request_id: float(record.ts_ms)})
        batch.zkeeptop(user_index, self.max_open)
        batch.expire(user_index, self.record_ttl_s)
        due = float(record.ts_ms + self.window_ms)
        batch.zadd(self.keys.impressions_due(partition), {record.request_id: due})

    def save(self, batch: WriteBatch, record: OpenImpression) -> None:
        """Queue the write of ``record`` as it now stands."""
        batch.set_bytes(
            self.keys.impression(record.request_id), encode_open(record), ttl_s=self.record_ttl_s
        )

    def click(self, record: OpenImpression, item_id: str, ts_ms: int) -> bool:
        """Mark ``item_id``'s slot clicked if the click falls inside the window; True if it
        changed the record (a second click on the same slot changes nothing)."""
        if not self._inside(record, ts_ms):
            return False
        slot = record.slot_of(item_id)
        if slot is None or slot.clicked:
            return False
        slot.clicked = True
        return True

    def match(
        self, records: Iterable[OpenImpression], item_id: str, ts_ms: int
    ) -> OpenImpression | None:
        """For a click without a request id: the latest open impression that showed the item
        before the click and within the window."""
        best: OpenImpression | None = None
        for record in records:
            if self._inside(record, ts_ms) and record.slot_of(item_id) is not None:
                if best is None or (record.ts_ms, record.request_id) > (
                    best.ts_ms,
                    best.request_id,
                ):
                    best = record
        return best

    def _inside(self, record: OpenImpression, ts_ms: int) -> bool:
        # A second of slack before the impression: the client's clock may run a little
        # behind the server's.
        return record.ts_ms - 1000 <= ts_ms <= record.ts_ms + self.window_ms

    def finalise(
        self, batch: WriteBatch, partition: int, records: Sequence[OpenImpression]
    ) -> list[Labelled]:
        """Queue the removal of ``records`` and return one labelled example per slot."""
        out: list[Labelled] = []
        due = self.keys.impressions_due(partition)
        if records:
            batch.zrem(due, [r.request_id for r in records])
        for record in records:
            batch.delete(self.keys.impression(record.request_id))
            batch.zrem(self.keys.impressions(record.user_id), [record.request_id])
            names = record.feature_names
            for slot in record.slots:
                values = (
                    np.frombuffer(slot.features, dtype="<f4").tolist()
                    if slot.features is not None
                    else []
                )
                features = (
                    dict(zip(names, values, strict=True))
                    if values and len(values) == len(names)
                    else None
                )
                out.append(
                    Labelled(
                        record.request_id,
                        record.user_id,
                        record.segment,
                        slot.item_id,
                        slot.source,
                        slot.position,
                        slot.propensity,
                        slot.clicked,
                        record.ts_ms,
                        features,
                    )
                )
        return out


def pack_features(values: list[float] | None) -> bytes | None:
    """Feature values as the float32 bytes an open slot keeps."""
    return None if values is None else np.asarray(values, dtype="<f4").tobytes()


def decode_many(raws: Mapping[str, bytes | None]) -> dict[str, OpenImpression]:
    """Decoded records by request id, leaving out missing and undecodable ones."""
    out: dict[str, OpenImpression] = {}
    for request_id, raw in raws.items():
        record = decode_open(raw) if raw is not None else None
        if record is not None:
            out[request_id] = record
    return out


#: Joins the fields of a parked click's member. Ids cannot hold control characters (the
#: event schema refuses them), so the member splits back unambiguously.
_PENDING_SEP = "\x1f"


class PendingClick(NamedTuple):
    """A click parked until the feed it came from is opened."""

    request_id: str | None
    item_id: str
    ts_ms: int


def pending_member(item_id: str, event_id: str, request_id: str | None) -> str:
    """The sorted-set member of a parked click; its event time is the member's score.

    A parked click costs the user's set ~15 bytes plus its ids, where the JSON array it
    replaced (which repeated the time) cost ~30 more.

    Examples:
        >>> member = pending_member("i7", "e1", None)
        >>> parse_pending(member, 1_000.0)
        PendingClick(request_id=None, item_id='i7', ts_ms=1000)
        >>> parse_pending(pending_member("i7", "e2", "r9"), 2_000.0).request_id
        'r9'

        Members parked before this format (JSON arrays) still parse:

        >>> parse_pending('["r9","i7",1000,"e1"]', 1_000.0)
        PendingClick(request_id='r9', item_id='i7', ts_ms=1000)
    """
    parts = (item_id, event_id) if request_id is None else (item_id, event_id, request_id)
    return _PENDING_SEP.join(parts)


def parse_pending(member: str, score: float) -> PendingClick:
    """The click a :func:`pending_member` (scored by event time) stands for."""
    if _PENDING_SEP not in member:
        request_id, item_id, ts, _event_id = orjson.loads(member)
        return PendingClick(request_id, item_id, int(ts))
    item_id, _event_id, *request = member.split(_PENDING_SEP)
    return PendingClick(request[0] if request else None, item_id, int(score))
