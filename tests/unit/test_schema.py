"""Event schema v1: what is accepted, what is rejected and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from features.errors import InvalidEventError
from streams.schema import (
    SCHEMA_VERSION,
    EventValidator,
    Impression,
    Interaction,
    Item,
    encode,
    event_key,
    json_schema,
)

NOW = 1_800_000_000_000
V = EventValidator(embedding_dim=3, max_payload_bytes=2048, max_future_ms=60_000)
CLICK = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": NOW}


def raw(obj: object) -> bytes:
    return json.dumps(obj).encode()


def reject(kind: type, payload: bytes) -> str:
    with pytest.raises(InvalidEventError) as info:
        V.decode(kind, payload, now_ms=NOW)
    return str(info.value)


def test_a_valid_interaction_round_trips() -> None:
    event = V.decode(Interaction, raw(CLICK), now_ms=NOW)
    assert event.type == "click" and event.schema_version == SCHEMA_VERSION
    assert V.decode(Interaction, encode(event), now_ms=NOW) == event
    assert event_key(event) == b"u1"


def test_unknown_extra_fields_are_tolerated() -> None:
    event = V.decode(Interaction, raw({**CLICK, "brand_new_field": [1, 2]}), now_ms=NOW)
    assert event.item_id == "i1"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({k: v for k, v in CLICK.items() if k != "user_id"}, "missing required field `user_id`"),
        ({**CLICK, "ts": "yesterday"}, "Expected `int`, got `str` - at `$.ts`"),
        ({**CLICK, "type": "poke"}, "Invalid enum value 'poke' - at `$.type`"),
        ({**CLICK, "schema_version": SCHEMA_VERSION + 1}, "newer than supported"),
        ({**CLICK, "ts": NOW + 3_600_000}, "in the future"),
        ({**CLICK, "user_id": ""}, "at `$.user_id`"),
        ({**CLICK, "position": -1}, "at `$.position`"),
    ],
)
def test_interactions_are_rejected_with_a_precise_reason(payload: dict, reason: str) -> None:
    assert reason in reject(Interaction, raw(payload))


def test_oversize_and_malformed_payloads_are_rejected() -> None:
    assert "exceeds the limit" in reject(Interaction, raw({**CLICK, "pad": "x" * 4096}))
    assert "truncated" in reject(Interaction, b'{"event_id": ')
    assert "JSON is malformed" in reject(Interaction, b"\xff\xfe garbage")
    assert "null" in reject(Interaction, None)
    assert "Expected `object`" in reject(Interaction, b"[1, 2]")


def test_item_embeddings_are_checked() -> None:
    item = {"item_id": "i1", "ts": NOW, "category": "news"}
    assert V.decode(Item, raw({**item, "embedding": [0.1, 0.2, 0.3]}), now_ms=NOW).embedding
    assert "dimension 2, expected 3" in reject(Item, raw({**item, "embedding": [0.1, 0.2]}))
    # JSON has no NaN or inf: the decoder refuses them, whatever the spelling.
    assert "malformed" in reject(Item, b'{"item_id":"i1","ts":1,"embedding":[NaN,0,0]}')
    assert "out of range" in reject(Item, b'{"item_id":"i1","ts":1,"embedding":[1e999,0,0]}')
    # Built in-process (no JSON), a NaN is still caught by the checks.
    with pytest.raises(InvalidEventError, match=r"embedding\[1\]"):
        V.check(Item(item_id="i", ts=1, embedding=[0.0, float("nan"), 0.0]), now_ms=NOW)


def test_item_defaults_and_ops() -> None:
    event = V.decode(Item, raw({"item_id": "i9", "ts": NOW}), now_ms=NOW)
    assert (event.op, event.available, event.tags) == ("upsert", True, [])
    assert "Invalid enum value 'drop'" in reject(Item, raw({"item_id": "i", "ts": 1, "op": "drop"}))
    assert event_key(event) == b"i9"


def test_impressions_require_valid_propensities() -> None:
    slot = {"item_id": "i", "position": 0, "source": "popular", "score": 1.0, "propensity": 0.5}
    imp = {"request_id": "r", "user_id": "u", "ts": NOW, "policy": "p", "slots": [slot]}
    assert V.decode(Impression, raw(imp), now_ms=NOW).slots[0].propensity == 0.5
    bad = {**imp, "slots": [{**slot, "propensity": 1.5}]}
    assert "at `$.slots[0].propensity`" in reject(Impression, raw(bad))


def test_committed_json_schema_matches_the_structs() -> None:
    committed = Path(__file__).parents[2] / "streams" / "event_schema.json"
    assert json.loads(committed.read_text()) == json.loads(json.dumps(json_schema())), (
        "streams/event_schema.json is stale: regenerate it with `streamrec schema`"
    )


def test_json_schema_describes_required_fields() -> None:
    defs = json_schema()["$defs"]
    assert set(defs["Interaction"]["required"]) == {"event_id", "user_id", "item_id", "type", "ts"}
    assert set(defs["Interaction"]["properties"]["type"]["enum"]) == {
        "view",
        "click",
        "like",
        "add_to_cart",
        "purchase",
        "share",
        "skip",
        "dismiss",
    }
    assert defs["Item"]["properties"]["op"]["enum"] == ["delete", "upsert"]
