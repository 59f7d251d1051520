"""Event schema v1: the single source of truth for every event on the wire.

Events travel as JSON. ``msgspec`` structs describe them, decode and validate them in one
pass (with a JSON path in every error), and generate the committed JSON Schema file.
Unknown extra fields are tolerated so that newer producers can add fields safely.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeAlias

import msgspec

from features.errors import InvalidEventError

SCHEMA_VERSION = 1

InteractionType: TypeAlias = Literal[
    "view", "click", "like", "add_to_cart", "purchase", "share", "skip", "dismiss"
]
ItemOp: TypeAlias = Literal["upsert", "delete"]

#: What an id may hold: anything printable. Control characters (a NUL from a C client, a
#: newline) would break the logs, the dashboard and line-based tools that show ids.
#: ``(?![\s\S])`` is the end of the text in both Python's and ECMA's regex (Python's ``$``
#: also matches before a final newline; JSON Schema validators follow ECMA).
ID_PATTERN = r"^[^\x00-\x1f\x7f]+(?![\s\S])"
#: The same rule for FastAPI path parameters: pydantic's Rust regex engine has no lookahead,
#: and its ``$`` (like ECMA's) is the end of the text.
PATH_ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
Id = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=256,
        pattern=ID_PATTERN,
        description="Opaque identifier, without control characters",
    ),
]
TimestampMs = Annotated[
    int, msgspec.Meta(ge=0, le=10**14, description="Event time, milliseconds since the epoch")
]
Version = Annotated[int, msgspec.Meta(ge=1, description="Schema version the producer wrote")]
ShortText = Annotated[str, msgspec.Meta(max_length=256)]
LongText = Annotated[str, msgspec.Meta(max_length=20_000)]
ContextValue: TypeAlias = str | int | float | bool


class Interaction(msgspec.Struct, kw_only=True, frozen=True):
    """A user did something with an item. Keyed by ``user_id`` on the interactions topic."""

    event_id: Id
    user_id: Id
    item_id: Id
    type: InteractionType
    ts: TimestampMs
    schema_version: Version = SCHEMA_VERSION
    session_id: Id | None = None
    request_id: Id | None = None
    position: Annotated[int, msgspec.Meta(ge=0, le=100_000)] | None = None
    dwell_ms: Annotated[int, msgspec.Meta(ge=0)] | None = None
    context: Annotated[dict[ShortText, ContextValue], msgspec.Meta(max_length=64)] = {}


class Item(msgspec.Struct, kw_only=True, frozen=True):
    """An item was created, changed or deleted. Keyed by ``item_id`` on the compacted topic."""

    item_id: Id
    ts: TimestampMs
    schema_version: Version = SCHEMA_VERSION
    op: ItemOp = "upsert"
    category: ShortText | None = None
    creator: ShortText | None = None
    tags: Annotated[list[ShortText], msgspec.Meta(max_length=64)] = []
    title: LongText | None = None
    text: LongText | None = None
    available: bool = True
    created_at: TimestampMs | None = None
    embedding: Annotated[list[float], msgspec.Meta(max_length=4096)] | None = None
    # True when ``embedding`` was learned from behaviour (streamrec's embedding refresher)
    # rather than given with the item: a later refresh may replace it, never a content one.
    embedding_learned: bool = False


class ImpressionSlot(msgspec.Struct, kw_only=True, frozen=True):
    """One position of a served feed and how it was chosen."""

    item_id: Id
    position: Annotated[int, msgspec.Meta(ge=0)]
    source: ShortText
    score: float
    propensity: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    # The ranker's inputs as served, aligned with the impression's ``feature_names``: the
    # worker learns from exactly what the server saw.
    features: Annotated[list[float], msgspec.Meta(max_length=256)] | None = None
    # The probability of every source that could have filled the slot (the chosen one's is
    # ``propensity``); absent for fixed slots (pinned, exploration).
    source_probabilities: (
        Annotated[
            dict[ShortText, Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]],
            msgspec.Meta(max_length=64),
        ]
        | None
    ) = None


class Impression(msgspec.Struct, kw_only=True, frozen=True):
    """A served feed. Written by serving, keyed by ``user_id`` on the impressions topic."""

    request_id: Id
    user_id: Id
    ts: TimestampMs
    policy: ShortText
    slots: Annotated[list[ImpressionSlot], msgspec.Meta(max_length=10_000)]
    schema_version: Version = SCHEMA_VERSION
    # Version of the ordering policy and ranker weights that served the feed.
    policy_version: ShortText | None = None
    # Context segment the bandit used (e.g. "new|mobile").
    segment: ShortText | None = None
    # How the slots' propensities were computed (e.g. "monte-carlo:256").
    propensity_method: ShortText | None = None
    feature_names: Annotated[list[ShortText], msgspec.Meta(max_length=256)] | None = None


Event: TypeAlias = Interaction | Item | Impression

_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {
    kind: msgspec.json.Decoder(kind) for kind in (Interaction, Item, Impression)
}
_ENCODER = msgspec.json.Encoder()

#: Everything decoding hostile bytes can raise: invalid UTF-8 inside a string and deeply
#: nested JSON escape msgspec's own error types.
DECODE_ERRORS: tuple[type[Exception], ...] = (
    msgspec.DecodeError,
    msgspec.ValidationError,
    UnicodeDecodeError,
    RecursionError,
)
#: Magnitudes from here up round to infinity as float32, in which features and embeddings
#: are stored (the largest float32 plus half a unit in the last place).
FLOAT32_LIMIT = 3.4028235677973366e38


class EventValidator:
    """Decodes raw bytes into events and rejects bad ones with a precise reason.

    Examples:
        >>> v = EventValidator(embedding_dim=2, max_payload_bytes=1024, max_future_ms=1000)
        >>> v.decode(Interaction, b'{"event_id":"e","user_id":"u","item_id":"i",'
        ...          b'"type":"click","ts":5}', now_ms=10).type
        'click'
        >>> v.decode(Interaction, b'{"event_id":"e","user_id":"u","item_id":"i",'
        ...          b'"type":"poke","ts":5}', now_ms=10)
        Traceback (most recent call last):
        ...
        features.errors.InvalidEventError: Invalid enum value 'poke' - at `$.type`
    """

    def __init__(self, *, embedding_dim: int, max_payload_bytes: int, max_future_ms: int) -> None:
        self.embedding_dim = embedding_dim
        self.max_payload_bytes = max_payload_bytes
        self.max_future_ms = max_future_ms

    def decode(self, kind: type[Any], raw: bytes | None, *, now_ms: int) -> Any:
        """Decode one message of ``kind``; raise :class:`InvalidEventError` with the reason."""
        if raw is None:
            raise InvalidEventError("empty message (null value)")
        if len(raw) > self.max_payload_bytes:
            raise InvalidEventError(
                f"payload of {len(raw)} bytes exceeds the limit of {self.max_payload_bytes}"
            )
        try:
            event = _DECODERS[kind].decode(raw)
        except DECODE_ERRORS as exc:
            raise InvalidEventError(_explain(raw, exc)) from None
        self.check(event, now_ms=now_ms)
        return event

    def check(self, event: Event, *, now_ms: int) -> None:
        """Checks that need configuration or arithmetic, beyond what the types say."""
        if event.schema_version > SCHEMA_VERSION:
            raise InvalidEventError(
                f"schema_version {event.schema_version} is newer than supported {SCHEMA_VERSION}"
                " - at `$.schema_version`"
            )
        if event.ts > now_ms + self.max_future_ms:
            raise InvalidEventError(
                f"ts {event.ts} is {event.ts - now_ms} ms in the future"
                f" (limit {self.max_future_ms} ms) - at `$.ts`"
            )
        if isinstance(event, Item) and event.embedding is not None:
            _check_embedding(event.embedding, self.embedding_dim)
        if isinstance(event, Impression):
            _check_impression(event)


def _explain(raw: bytes, exc: Exception) -> str:
    """The decode error, naming the field when it is a NaN or Infinity literal: Python's
    ``json.dumps`` writes them, msgspec sees only an invalid character. A truncated message
    gets its position too (msgspec gives one for every other syntax error).

    Examples:
        >>> try:
        ...     msgspec.json.decode(b'{"ts": 1')
        ... except msgspec.DecodeError as exc:
        ...     _explain(b'{"ts": 1', exc)
        'Input data was truncated (byte 8: the message ends inside a JSON value)'
    """
    if isinstance(exc, msgspec.DecodeError) and "truncated" in str(exc):
        return f"{exc} (byte {len(raw)}: the message ends inside a JSON value)"
    if not isinstance(exc, msgspec.DecodeError) or "invalid character" not in str(exc):
        return str(exc)
    try:
        doc = json.loads(raw)  # accepts the literals; only runs for a message being rejected
    except (ValueError, RecursionError):
        return str(exc)
    path = _non_finite_path(doc)
    return str(exc) if path is None else f"{exc}: {path[1]} is not JSON - at `{path[0]}`"


def _non_finite_path(doc: Any) -> tuple[str, str] | None:
    """JSON path and value of the first NaN or infinity in a decoded document."""
    # Each entry links to its parent's path instead of copying it: a hostile document with
    # long keys and many children would otherwise cost path length × children.
    Link = tuple[str, Any]  # (segment, parent link or None)
    stack: list[tuple[Link | None, Any]] = [(None, doc)]
    while stack:
        link, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            segments = []
            while link is not None:
                segment, link = link
                segments.append(segment)
            shown = "NaN" if math.isnan(value) else ("-" if value < 0 else "") + "Infinity"
            return "$" + "".join(reversed(segments)), shown
        if isinstance(value, dict):
            stack.extend(((f".{k}", link), v) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend(((f"[{i}]", link), v) for i, v in reversed(list(enumerate(value))))
    return None


def _check_impression(event: Impression) -> None:
    names = event.feature_names
    for i, slot in enumerate(event.slots):
        if not math.isfinite(slot.score):
            raise InvalidEventError(f"score is not finite - at `$.slots[{i}].score`")
        if slot.features is None:
            continue
        if names is None or len(slot.features) != len(names):
            expected = "no features (feature_names is absent)" if names is None else len(names)
            raise InvalidEventError(
                f"{len(slot.features)} features, expected {expected} - at `$.slots[{i}].features`"
            )
        for j, value in enumerate(slot.features):
            if not (math.isfinite(value) and abs(value) < FLOAT32_LIMIT):
                raise InvalidEventError(
                    f"feature value is {value} - at `$.slots[{i}].features[{j}]`"
                )


def _check_embedding(values: Sequence[float], dim: int) -> None:
    if len(values) != dim:
        raise InvalidEventError(
            f"embedding has dimension {len(values)}, expected {dim} - at `$.embedding`"
        )
    for i, value in enumerate(values):
        if not (math.isfinite(value) and abs(value) < FLOAT32_LIMIT):
            raise InvalidEventError(f"embedding value is {value} - at `$.embedding[{i}]`")


def encode(event: Event) -> bytes:
    """Encode an event as compact JSON bytes."""
    return _ENCODER.encode(event)


def event_key(event: Event) -> bytes:
    """The partitioning key: ``user_id`` for interactions and impressions, ``item_id`` for items."""
    return (event.item_id if isinstance(event, Item) else event.user_id).encode()


def schema_components(ref_template: str) -> dict[str, Any]:
    """JSON Schema of each event kind by name, with references written as ``ref_template``."""
    _, components = msgspec.json.schema_components(
        (Interaction, Item, Impression), ref_template=ref_template
    )
    return components


def json_schema() -> dict[str, Any]:
    """The JSON Schema of all three event kinds, generated from the structs above."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"streamrec events v{SCHEMA_VERSION}",
        "oneOf": [{"$ref": f"#/$defs/{name}"} for name in ("Interaction", "Item", "Impression")],
        "$defs": schema_components("#/$defs/{name}"),
    }
