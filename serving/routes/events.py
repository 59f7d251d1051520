"""POST /events and POST /items: validate against schema v1, produce, answer 202.

The app puts both behind a write key (`serving.security`); a body over `max_body_bytes`
gets 413 before it is parsed, chunked or not.
"""

from __future__ import annotations

import re
import time
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from features.errors import InvalidEventError, TransportUnavailableError
from serving.api_models import BODY_ERRORS, Accepted, EventsRefused, Responses, unavailable
from serving.deps import ResourcesDep, SettingsDep
from serving.resources import Resources
from serving.responses import JSONBytes, error
from serving.security import BodyTooLargeError, read_body
from streams.schema import DECODE_ERRORS, Event, Interaction, Item

router = APIRouter(tags=["events"])

_PATH = re.compile(r"at `\$(?P<path>[^`]*)`")
_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def error_location(message: str, prefix: tuple[str | int, ...] = ("body",)) -> list[str | int]:
    """Turn a msgspec error's JSON path into a FastAPI-style ``loc``.

    Examples:
        >>> error_location("Expected `int`, got `str` - at `$[2].ts`")
        ['body', 2, 'ts']
        >>> error_location("Object missing required field `user_id` - at `$[0]`")
        ['body', 0, 'user_id']
    """
    loc: list[str | int] = list(prefix)
    path = _PATH.search(message)
    if path:
        for name, index in _STEP.findall(path.group("path")):
            loc.append(name if name else int(index))
    missing = _MISSING.search(message)
    if missing:
        loc.append(missing.group("field"))
    return loc


def _body_schema(kind: str) -> dict[str, Any]:
    one = {"$ref": f"#/components/schemas/{kind}"}
    schema = {"oneOf": [one, {"type": "array", "items": one, "maxItems": 10_000}]}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


#: How long a request waits for room in a full producer buffer before it answers 503: long
#: enough to ride out a burst, short enough not to hold a server thread through an outage.
FULL_BUFFER_WAIT_S = 0.5
#: What a 503 asks the client to wait before sending the same body again.
RETRY_AFTER_S = 5


def _send_all(resources: Resources, events: list[Event]) -> None:
    """Queue all of ``events`` or none (TransportUnavailableError), so that a client that gets
    a 503 may send the same body again without duplicating any of it."""
    send_many = getattr(resources.sink, "send_many", None)
    if send_many is not None:  # the Kafka producer; the in-process bus is never full
        send_many(events, wait_s=FULL_BUFFER_WAIT_S)
        return
    for event in events:
        resources.sink.send(event)


def decode_body(body: bytes, kind: type[Any]) -> Any:
    """One event of ``kind`` or a list of them; integral floats (``131072.0``) count as the
    integers JSON Schema says they are, where the schema asks for an integer.

    Only a body that fails on such a float is decoded a second time, generically: a strict
    decode is the common path, and strings stay refused where numbers are due.

    Examples:
        >>> body = b'{"event_id":"e","user_id":"u","item_id":"i","type":"click","ts":5.0}'
        >>> decode_body(body, Interaction).ts
        5
        >>> decode_body(body.replace(b"5.0", b"5.5"), Interaction)
        Traceback (most recent call last):
        ...
        msgspec.ValidationError: Expected `int`, got `float` - at `$.ts`
    """
    wanted = kind | list[kind]  # type: ignore[valid-type]
    try:
        return msgspec.json.decode(body, type=wanted)
    except msgspec.ValidationError as exc:
        if "got `float`" not in str(exc):
            raise
        return msgspec.convert(_integral_to_int(msgspec.json.decode(body)), type=wanted)


def _integral_to_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral_to_int(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral_to_int(v) for k, v in value.items()}
    return value


def too_late(event: Event, now_ms: int, max_late_ms: int | None) -> str | None:
    """Why the worker would drop ``event`` as late, judged by the wall clock; None if not.

    The worker measures lateness against its partition's newest event time, which is at
    most the wall clock (future events are refused), so an event this late at the door is
    late there too: refusing it now tells the client, where a 202 would hide a dead letter.

    Examples:
        >>> click = Interaction(event_id="e", user_id="u", item_id="i", type="click", ts=0)
        >>> too_late(click, now_ms=7_200_000, max_late_ms=3_600_000)
        'ts 0 is 7200000 ms old; the worker drops interactions older than 3600000 ms'
        >>> too_late(click, now_ms=1000, max_late_ms=3_600_000) is None
        True
    """
    if max_late_ms is None or not isinstance(event, Interaction):
        return None
    age = now_ms - event.ts
    if age <= max_late_ms:
        return None
    return (
        f"ts {event.ts} is {age} ms old; the worker drops interactions older than {max_late_ms} ms"
    )


async def _accept(
    request: Request, kind: type[Any], resources: Resources, max_bytes: int
) -> JSONBytes:
    try:
        body = await read_body(request, max_bytes)
    except BodyTooLargeError as exc:
        # The rest of the body stays unread: the connection is not worth keeping.
        response = error(413, ["body"], str(exc))
        response.headers["Connection"] = "close"
        return response
    try:
        decoded = decode_body(body, kind)
    except DECODE_ERRORS as exc:
        return error(422, error_location(str(exc)), str(exc))
    events: list[Event] = decoded if isinstance(decoded, list) else [decoded]
    now_ms = int(time.time() * 1000)
    for index, event in enumerate(events):
        prefix = ("body", index) if isinstance(decoded, list) else ("body",)
        try:
            resources.validator.check(event, now_ms=now_ms)
        except InvalidEventError as exc:
            return error(422, error_location(str(exc), prefix), str(exc))
        if late := too_late(event, now_ms, resources.max_late_ms):
            return error(422, [*prefix, "ts"], late)
    capacity = getattr(resources.sink, "capacity", None)
    if capacity is not None and len(events) > capacity:
        # It would never fit, however long the client waited: not a 503.
        return error(
            413, ["body"], f"{len(events)} events exceed the producer buffer of {capacity}"
        )
    try:
        # librdkafka may block briefly when its queue is full: keep that off the event loop.
        await run_in_threadpool(_send_all, resources, events)
    except TransportUnavailableError as exc:
        # Nothing of the body was taken; the events are not lost, they were refused.
        return JSONBytes(
            {"detail": str(exc), "accepted": 0},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return JSONBytes({"accepted": len(events)}, status_code=202)


#: What POST /events and /items answer besides the access policy's errors.
RESPONSES: Responses = {
    202: {"model": Accepted},
    **BODY_ERRORS,
    **unavailable(
        "The producer buffer stayed full: nothing was taken, send the same body again later",
        EventsRefused,
    ),
}


@router.post(
    "/events",
    status_code=202,
    responses=RESPONSES,
    openapi_extra=_body_schema("Interaction"),
)
async def post_events(
    request: Request, resources: ResourcesDep, settings: SettingsDep
) -> JSONBytes:
    """Accept one interaction or a JSON array of them."""
    return await _accept(request, Interaction, resources, settings.max_body_bytes)


@router.post("/items", status_code=202, responses=RESPONSES, openapi_extra=_body_schema("Item"))
async def post_items(request: Request, resources: ResourcesDep, settings: SettingsDep) -> JSONBytes:
    """Accept one item upsert or delete, or a JSON array of them."""
    return await _accept(request, Item, resources, settings.max_body_bytes)
