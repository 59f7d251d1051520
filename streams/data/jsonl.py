"""Reading events from JSONL: one event per line, its kind told by its fields."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from features.errors import InvalidEventError
from streams.io.transport import EventSink
from streams.schema import DECODE_ERRORS, Event, EventValidator, Impression, Interaction, Item


def event_kind(obj: dict[str, Any]) -> type[Event]:
    """Impressions have ``slots``, interactions a ``user_id``; anything else is an item event.

    Examples:
        >>> event_kind({"user_id": "u", "item_id": "i"}).__name__
        'Interaction'
        >>> event_kind({"item_id": "i", "op": "delete"}).__name__
        'Item'
    """
    if "slots" in obj:
        return Impression
    if "user_id" in obj:
        return Interaction
    return Item


def parse_line(line: bytes, validator: EventValidator, now_ms: int) -> Event:
    """Decode and validate one JSONL line; raise InvalidEventError with the reason."""
    if len(line) > validator.max_payload_bytes:
        raise InvalidEventError(f"line of {len(line)} bytes exceeds {validator.max_payload_bytes}")
    try:
        obj = msgspec.json.decode(line)
        if not isinstance(obj, dict):
            raise InvalidEventError(f"expected a JSON object, got {type(obj).__name__}")
        event: Event = msgspec.convert(obj, event_kind(obj))
    except DECODE_ERRORS as exc:
        raise InvalidEventError(str(exc)) from None
    validator.check(event, now_ms=now_ms)
    return event


def read_events(
    lines: Iterable[bytes], validator: EventValidator, rejected: Counter[str]
) -> Iterator[Event]:
    """Valid events of ``lines``; each bad line counts under its reason in ``rejected``."""
    now_ms = int(time.time() * 1000)
    for line in lines:
        if not line.strip():
            continue
        try:
            yield parse_line(line, validator, now_ms)
        except InvalidEventError as exc:
            rejected[str(exc)] += 1


def produce_jsonl(
    lines: Iterable[bytes], sink: EventSink, validator: EventValidator
) -> dict[str, Any]:
    """Send every valid line to ``sink``; report what was sent and what was rejected and why."""
    rejected: Counter[str] = Counter()
    sent = 0
    for event in read_events(lines, validator, rejected):
        sink.send(event)
        sent += 1
    undelivered = sink.flush(30.0)
    return {
        "sent": sent,
        "undelivered": undelivered,
        "rejected": sum(rejected.values()),
        "reasons": dict(rejected.most_common(20)),
    }
