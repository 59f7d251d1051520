"""Property-based tests of event schema v1 (`streams/schema.py`).

Valid events of every kind survive encode → decode unchanged and the validator accepts them.
Anything else — arbitrary bytes, truncated or mistyped JSON, missing fields, NaN or inf,
wrong embedding dimensions, oversize strings and payloads, unknown types, impossible event
times — makes ``EventValidator.decode`` raise ``InvalidEventError`` and nothing else, with a
reason that names the JSON path or the limit. The worker dead-letters exactly those, so any
other exception here is a message that would stop a worker.

The strategies are shared with `test_processor_properties.py`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from features.errors import InvalidEventError
from streams.schema import (
    SCHEMA_VERSION,
    EventValidator,
    Impression,
    ImpressionSlot,
    Interaction,
    Item,
    encode,
)

DIM = 8
#: The newest event time the schema allows; validating "now" there accepts every valid ts.
MAX_TS = 10**14
LIMIT = 64 * 1024
VALIDATOR = EventValidator(embedding_dim=DIM, max_payload_bytes=LIMIT, max_future_ms=300_000)
#: Enough room for any generated valid event (the payload limit has its own property).
ROOMY = EventValidator(embedding_dim=DIM, max_payload_bytes=16 * 1024 * 1024, max_future_ms=0)
TYPES = ["view", "click", "like", "add_to_cart", "purchase", "share", "skip", "dismiss"]
REQUIRED: dict[type[Any], list[str]] = {
    Interaction: ["event_id", "user_id", "item_id", "type", "ts"],
    Item: ["item_id", "ts"],
    Impression: ["request_id", "user_id", "ts", "policy", "slots"],
}

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# --- strategies of valid events ------------------------------------------------------------

#: Any code point but lone surrogates, which no UTF-8 JSON producer can send.
CHARS = st.characters(codec="utf-8")
#: Ids hold no control characters (streams.schema.ID_PATTERN).
CONTROL = "".join(map(chr, [*range(0x20), 0x7F]))
ID_CHARS = st.characters(codec="utf-8", exclude_characters=CONTROL)
ids = st.one_of(
    st.text(ID_CHARS, min_size=1, max_size=24),
    st.text(ID_CHARS, min_size=250, max_size=256),  # at the length limit
)
short_text = st.text(CHARS, max_size=40)
timestamps = st.integers(min_value=0, max_value=MAX_TS)
finite = st.floats(allow_nan=False, allow_infinity=False)
#: Embeddings and features are stored as float32: larger magnitudes are rejected.
finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
context_values = st.one_of(short_text, int64, finite, st.booleans())


@st.composite
def interactions(draw: st.DrawFn, ts: st.SearchStrategy[int] = timestamps) -> Interaction:
    return Interaction(
        event_id=draw(ids),
        user_id=draw(ids),
        item_id=draw(ids),
        type=draw(st.sampled_from(TYPES)),
        ts=draw(ts),
        session_id=draw(st.none() | ids),
        request_id=draw(st.none() | ids),
        position=draw(st.none() | st.integers(0, 100_000)),
        dwell_ms=draw(st.none() | st.integers(0, 2**63 - 1)),
        context=draw(st.dictionaries(short_text, context_values, max_size=6)),
    )


@st.composite
def items(
    draw: st.DrawFn,
    ts: st.SearchStrategy[int] = timestamps,
    values: st.SearchStrategy[float] = finite32,
) -> Item:
    return Item(
        item_id=draw(ids),
        ts=draw(ts),
        op=draw(st.sampled_from(["upsert", "delete"])),
        category=draw(st.none() | short_text),
        creator=draw(st.none() | short_text),
        tags=draw(st.lists(short_text, max_size=6)),
        title=draw(st.none() | st.text(CHARS, max_size=200)),
        text=draw(st.none() | st.text(CHARS, max_size=200)),
        available=draw(st.booleans()),
        created_at=draw(st.none() | ts),
        embedding=draw(st.none() | st.lists(values, min_size=DIM, max_size=DIM)),
    )


probabilities = st.floats(min_value=0.0, max_value=1.0)


@st.composite
def impressions(
    draw: st.DrawFn,
    ts: st.SearchStrategy[int] = timestamps,
    values: st.SearchStrategy[float] = finite32,
) -> Impression:
    n_features = draw(st.none() | st.integers(0, 6))
    names = (
        None
        if n_features is None
        else draw(st.lists(short_text, min_size=n_features, max_size=n_features))
    )
    slots = [
        ImpressionSlot(
            item_id=draw(ids),
            position=position,
            source=draw(short_text),
            score=draw(finite),
            propensity=draw(probabilities),
            features=None
            if n_features is None or draw(st.booleans())
            else draw(st.lists(values, min_size=n_features, max_size=n_features)),
            source_probabilities=draw(
                st.none() | st.dictionaries(short_text, probabilities, max_size=4)
            ),
        )
        for position in range(draw(st.integers(0, 5)))
    ]
    return Impression(
        request_id=draw(ids),
        user_id=draw(ids),
        ts=draw(ts),
        policy=draw(short_text),
        slots=slots,
        policy_version=draw(st.none() | short_text),
        segment=draw(st.none() | short_text),
        propensity_method=draw(st.none() | short_text),
        feature_names=names,
    )


events = st.one_of(interactions(), items(), impressions())

# --- helpers --------------------------------------------------------------------------------


def reason(kind: type[Any], raw: bytes | None, validator: EventValidator = VALIDATOR) -> str:
    """The rejection reason; fails the test if anything but InvalidEventError is raised."""
    with pytest.raises(InvalidEventError) as info:
        validator.decode(kind, raw, now_ms=MAX_TS)
    message = str(info.value)
    assert message.strip(), "a rejection without a reason"
    return message


def decode_or_reject(kind: type[Any], raw: bytes | None) -> Any:
    """Accept or reject, and nothing else: any other exception would stop a worker."""
    try:
        event = VALIDATOR.decode(kind, raw, now_ms=MAX_TS)
    except InvalidEventError as exc:
        assert str(exc).strip(), "a rejection without a reason"
        return None
    assert isinstance(event, kind)
    return event


def as_dict(event: Any) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(event)
    return out


def dumps(obj: Any) -> bytes:
    """JSON the way Python's json module writes it: NaN and Infinity included."""
    return json.dumps(obj).encode()


# --- valid events ---------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(events)
def test_valid_events_round_trip_and_are_accepted(event: Any) -> None:
    kind = type(event)
    raw = encode(event)
    assert msgspec.json.decode(raw, type=kind) == event
    assert ROOMY.decode(kind, raw, now_ms=MAX_TS) == event
    # Producers that write the same JSON with other spacing or key order are just as valid.
    assert ROOMY.decode(kind, json.dumps(as_dict(event), indent=1).encode(), now_ms=MAX_TS) == event


@PROPERTY_SETTINGS
@given(events)
def test_the_payload_limit_is_the_only_difference_a_small_limit_makes(event: Any) -> None:
    raw = encode(event)
    small = EventValidator(embedding_dim=DIM, max_payload_bytes=512, max_future_ms=0)
    if len(raw) <= 512:
        assert small.decode(type(event), raw, now_ms=MAX_TS) == event
    else:
        assert f"{len(raw)} bytes exceeds the limit of 512" in reason(type(event), raw, small)


# --- garbage --------------------------------------------------------------------------------

KINDS = st.sampled_from([Interaction, Item, Impression])


@PROPERTY_SETTINGS
@given(KINDS, st.binary(max_size=4096))
def test_arbitrary_bytes_are_rejected_with_a_reason(kind: type[Any], raw: bytes) -> None:
    decode_or_reject(kind, raw)


@PROPERTY_SETTINGS
@given(
    KINDS,
    st.recursive(
        st.none() | st.booleans() | int64 | finite | short_text,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(short_text, inner, max_size=4),
        max_leaves=20,
    ),
)
def test_arbitrary_json_documents_are_rejected_with_a_reason(kind: type[Any], doc: Any) -> None:
    decode_or_reject(kind, dumps(doc))


def test_a_null_message_is_rejected() -> None:
    assert "null value" in reason(Item, None)


@PROPERTY_SETTINGS
@given(events, st.data())
def test_truncated_json_is_rejected(event: Any, data: st.DataObject) -> None:
    raw = encode(event)
    cut = data.draw(st.integers(0, len(raw) - 1))
    message = reason(type(event), raw[:cut])
    # A cut inside a number may leave a shorter, complete one ("9.5e-05" -> "9.5") that the
    # types refuse before the parser reaches the end: then the reason names the field.
    assert "truncated" in message or "malformed" in message or " - at `$" in message, message


@pytest.mark.parametrize("document", [b"[]", b"42", b'"click"', b"null", b"true", b"1.5"])
@pytest.mark.parametrize("kind", [Interaction, Item, Impression])
def test_a_json_value_that_is_not_an_object_is_rejected(kind: type[Any], document: bytes) -> None:
    assert "Expected `object`" in reason(kind, document)


@PROPERTY_SETTINGS
@given(events, st.data())
def test_a_missing_required_field_is_named(event: Any, data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(REQUIRED[type(event)]))
    doc = as_dict(event)
    del doc[field]
    assert f"missing required field `{field}`" in reason(type(event), dumps(doc))


@PROPERTY_SETTINGS
@given(events, st.data())
def test_an_id_with_a_control_character_is_named(event: Any, data: st.DataObject) -> None:
    field = "item_id" if isinstance(event, Item) else "user_id"
    doc = as_dict(event)
    control = data.draw(st.sampled_from(CONTROL))
    doc[field] = doc[field][:100] + control
    assert f"at `$.{field}`" in reason(type(event), dumps(doc))


#: JSON values of the wrong type for each field's declared type.
WRONG_FOR_STR: list[Any] = [5, 1.5, True, [], {}, ["x"]]
WRONG_FOR_INT: list[Any] = ["5", 1.5, True, [], {}, None]
WRONG_FOR_LIST: list[Any] = ["x", 5, {}, True]
MISTYPED: dict[type[Any], dict[str, list[Any]]] = {
    Interaction: {
        "event_id": [*WRONG_FOR_STR, None],
        "user_id": [*WRONG_FOR_STR, None],
        "item_id": [*WRONG_FOR_STR, None],
        "type": [*WRONG_FOR_STR, None],
        "ts": WRONG_FOR_INT,
        "position": ["5", 1.5, True, []],
        "dwell_ms": ["5", 1.5, True, []],
        "context": ["x", 5, [], True],
        "schema_version": WRONG_FOR_INT,
    },
    Item: {
        "item_id": [*WRONG_FOR_STR, None],
        "ts": WRONG_FOR_INT,
        "op": [*WRONG_FOR_STR, None, "upsertt"],
        "category": WRONG_FOR_STR,
        "tags": WRONG_FOR_LIST,
        "available": ["yes", 1, None, []],
        "embedding": WRONG_FOR_LIST,
        "created_at": ["5", 1.5, True, []],
    },
    Impression: {
        "request_id": [*WRONG_FOR_STR, None],
        "user_id": [*WRONG_FOR_STR, None],
        "ts": WRONG_FOR_INT,
        "policy": [*WRONG_FOR_STR, None],
        "slots": [*WRONG_FOR_LIST, None],
        "feature_names": WRONG_FOR_LIST,
    },
}


@PROPERTY_SETTINGS
@given(events, st.data())
def test_a_mistyped_field_is_named_by_its_json_path(event: Any, data: st.DataObject) -> None:
    kind = type(event)
    field = data.draw(st.sampled_from(sorted(MISTYPED[kind])))
    value = data.draw(st.sampled_from(MISTYPED[kind][field]))
    doc = {**as_dict(event), field: value}
    assert f"at `$.{field}`" in reason(kind, dumps(doc))


@PROPERTY_SETTINGS
@given(items(), st.data())
def test_a_wrong_embedding_dimension_is_named(event: Item, data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 3 * DIM).filter(lambda n: n != DIM))
    doc = {**as_dict(event), "embedding": data.draw(st.lists(finite, min_size=n, max_size=n))}
    message = reason(Item, dumps(doc))
    assert f"embedding has dimension {n}, expected {DIM} - at `$.embedding`" in message


NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


@PROPERTY_SETTINGS
@given(items(), st.data())
def test_nan_or_inf_in_an_embedding_is_rejected(event: Item, data: st.DataObject) -> None:
    """Python's json writes NaN/Infinity/-Infinity, which are not JSON: rejected as malformed
    (the test below checks that the field is named); a number too large for a float64
    (1e999, what other languages write for inf) is rejected at its path."""
    vector = data.draw(st.lists(finite, min_size=DIM, max_size=DIM))
    at = data.draw(st.integers(0, DIM - 1))
    vector[at] = data.draw(NON_FINITE)
    message = reason(Item, dumps({**as_dict(event), "embedding": vector}))
    assert f"at `$.embedding[{at}]`" in message, message
    marker = dumps(1.2345678901234567e-300)  # no other field holds this number
    doc = {**as_dict(event), "embedding": [1.2345678901234567e-300] + [0.5] * (DIM - 1)}
    overflow = dumps(doc).replace(b"[" + marker, b"[1e999")
    assert "at `$.embedding[0]`" in reason(Item, overflow)


@PROPERTY_SETTINGS
@given(impressions(), st.data())
def test_nan_or_inf_in_an_impression_score_or_feature_is_rejected(
    event: Impression, data: st.DataObject
) -> None:
    assume(event.slots)
    doc = as_dict(event)
    slot = data.draw(st.integers(0, len(event.slots) - 1))
    doc["slots"][slot]["score"] = data.draw(NON_FINITE)
    message = reason(Impression, dumps(doc))
    assert f"at `$.slots[{slot}].score`" in message, message
    overflow = dumps(doc).replace(b"NaN", b"1e999").replace(b"-Infinity", b"-1e999")
    overflow = overflow.replace(b"Infinity", b"1e999")
    assert f"at `$.slots[{slot}].score`" in reason(Impression, overflow)


@pytest.mark.parametrize("literal", [math.nan, math.inf, -math.inf])
def test_nan_in_an_embedding_is_named_by_its_json_path(literal: float) -> None:
    doc = {"item_id": "i", "ts": 1, "embedding": [0.0] * (DIM - 1) + [literal]}
    message = reason(Item, dumps(doc))
    assert f"is not JSON - at `$.embedding[{DIM - 1}]`" in message, message


STRING_LIMITS: dict[type[Any], list[tuple[str, int]]] = {
    Interaction: [("event_id", 256), ("user_id", 256), ("item_id", 256)],
    Item: [("item_id", 256), ("category", 256), ("title", 20_000), ("text", 20_000)],
    Impression: [("request_id", 256), ("user_id", 256), ("policy", 256)],
}


@PROPERTY_SETTINGS
@given(events, st.data())
def test_oversize_strings_are_named(event: Any, data: st.DataObject) -> None:
    kind: type[Any] = type(event)
    field, limit = data.draw(st.sampled_from(STRING_LIMITS[kind]))
    size = data.draw(st.integers(limit + 1, limit + 50))
    doc = {**as_dict(event), field: "x" * size}
    assert f"length <= {limit} - at `$.{field}`" in reason(kind, dumps(doc), ROOMY)


@PROPERTY_SETTINGS
@given(events, st.integers(LIMIT + 1, 4 * LIMIT))
def test_a_huge_payload_is_rejected_naming_the_limit(event: Any, size: int) -> None:
    doc = as_dict(event)
    padded = dumps({**doc, "padding": "x" * size})  # an unknown field: fine but for its size
    assert f"exceeds the limit of {LIMIT}" in reason(type(event), padded)


@PROPERTY_SETTINGS
@given(interactions(), short_text.filter(lambda t: t not in TYPES))
def test_an_unknown_interaction_type_is_named(event: Interaction, kind: str) -> None:
    message = reason(Interaction, dumps({**as_dict(event), "type": kind}))
    assert "Invalid enum value" in message and "at `$.type`" in message


@PROPERTY_SETTINGS
@given(events, st.integers(1, 10**20))
def test_an_event_time_too_far_ahead_is_named(event: Any, ahead: int) -> None:
    """Ahead of now by more than max_future_ms, or past the schema's ts bound."""
    now = min(event.ts, MAX_TS - 300_000)
    ts = now + 300_000 + ahead
    with pytest.raises(InvalidEventError, match=r"at `\$\.ts`"):
        VALIDATOR.decode(type(event), dumps({**as_dict(event), "ts": ts}), now_ms=now)


@PROPERTY_SETTINGS
@given(events, st.integers(-(10**20), -1))
def test_a_negative_event_time_is_named(event: Any, ts: int) -> None:
    assert "at `$.ts`" in reason(type(event), dumps({**as_dict(event), "ts": ts}))


@PROPERTY_SETTINGS
@given(events, st.integers(SCHEMA_VERSION + 1, 10**6))
def test_a_newer_schema_version_is_named(event: Any, version: int) -> None:
    doc = {**as_dict(event), "schema_version": version}
    assert "newer than supported" in reason(type(event), dumps(doc))


@PROPERTY_SETTINGS
@given(
    events,
    st.recursive(
        st.none() | st.booleans() | int64 | finite | short_text,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_text, inner, max_size=3),
        max_leaves=30,
    ),
)
def test_unknown_extra_fields_of_any_json_shape_are_tolerated(event: Any, extra: Any) -> None:
    doc = as_dict(event)
    doc["x-unknown-field"] = extra
    assert ROOMY.decode(type(event), dumps(doc), now_ms=MAX_TS) == event


INVALID_UTF8 = st.sampled_from(
    [b"\xff", b"\x80", b"\xc3\x28", b"\xe2\x28\xa1", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]
)


@PROPERTY_SETTINGS
@given(events, st.text(CHARS, max_size=8), INVALID_UTF8)
def test_invalid_utf8_in_a_string_is_rejected(event: Any, prefix: str, bad: bytes) -> None:
    kind = type(event)
    field = REQUIRED[kind][0]  # event_id / item_id / request_id: a string every event has
    raw = dumps({**as_dict(event), field: "@@BAD@@"}).replace(b"@@BAD@@", prefix.encode() + bad)
    reason(kind, raw)


@pytest.mark.parametrize("kind", [Interaction, Item, Impression])
def test_deeply_nested_json_is_rejected_not_raised(kind: type[Any]) -> None:
    depth = 2_000
    raw = b'{"x-unknown":' + b"[" * depth + b"]" * depth + b"}"
    assert len(raw) < LIMIT
    reason(kind, raw)
