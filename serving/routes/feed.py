"""GET /feed/{user_id} and GET /similar/{item_id}."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query

from features.errors import StoreUnavailableError
from serving.api_models import INVALID, ErrorBody, Feed, Similar
from serving.deps import FeedServiceDep, ResourcesDep, SettingsDep
from serving.feed import feed_json
from serving.funnel.context import FeedRequest
from serving.request_context import request_id as current_request_id
from serving.responses import JSONBytes, error
from streams.schema import PATH_ID_PATTERN

router = APIRouter(tags=["feed"])

#: Path ids follow the event schema's id rules, so a feed is never asked for an id no event
#: could carry.
IdPath = Annotated[str, Path(min_length=1, max_length=256, pattern=PATH_ID_PATTERN)]
Name = Annotated[str, Query(min_length=1, max_length=256)]


def _request_id() -> str:
    rid = current_request_id.get()
    return rid if rid != "-" else uuid.uuid4().hex


@router.get(
    "/feed/{user_id}",
    response_class=JSONBytes,
    responses={200: {"model": Feed}, **INVALID},
)
def get_feed(
    user_id: IdPath,
    service: FeedServiceDep,
    settings: SettingsDep,
    k: Annotated[int | None, Query(ge=1, description="Feed length")] = None,
    device: Annotated[str | None, Query(max_length=64, description="Client device")] = None,
    category: Annotated[
        list[Name] | None, Query(max_length=50, description="Only these categories")
    ] = None,
    exclude_category: Annotated[
        list[Name] | None, Query(max_length=50, description="Never these categories")
    ] = None,
    request_id: Annotated[
        str | None,
        Query(min_length=1, max_length=256, description="Id to log (default: a new one)"),
    ] = None,
    debug: Annotated[bool, Query(description="Include the per-stage trace")] = False,
) -> JSONBytes:
    """The user's feed through retrieval, filtering, scoring and bandit ordering.

    Clicks on its items should carry the returned ``request_id`` back in ``POST /events``.
    """
    size = k or settings.default_k
    if size > settings.max_k:
        return error(422, ["query", "k"], f"k must be <= {settings.max_k}")
    request = FeedRequest(
        user_id=user_id,
        k=size,
        now_s=time.time(),
        # The HTTP request's id, so the impression and this request's logs share one id.
        request_id=request_id or _request_id(),
        device=device,
        categories=frozenset(category or ()),
        exclude_categories=frozenset(exclude_category or ()),
    )
    return JSONBytes(feed_json(service.feed(request), debug))


@router.get(
    "/similar/{item_id}",
    response_class=JSONBytes,
    responses={
        200: {"model": Similar},
        404: {"model": ErrorBody, "description": "No such item in the catalog"},
        **INVALID,
    },
)
def get_similar(
    item_id: IdPath,
    service: FeedServiceDep,
    resources: ResourcesDep,
    settings: SettingsDep,
    k: Annotated[int | None, Query(ge=1, description="How many items")] = None,
    debug: Annotated[bool, Query(description="Include the trace")] = False,
) -> JSONBytes:
    """Items like ``item_id``: its embedding neighbours and what users went on to next."""
    size = k or settings.default_k
    if size > settings.max_k:
        return error(422, ["query", "k"], f"k must be <= {settings.max_k}")
    try:
        meta = resources.live.item_record(item_id).meta
    except StoreUnavailableError:
        meta = None  # the similar feed below answers degraded
    else:
        if meta is None:
            return error(404, ["path", "item_id"], f"unknown item {item_id!r}")
    request = FeedRequest(
        user_id="", k=size, now_s=time.time(), request_id=uuid.uuid4().hex, item_id=item_id
    )
    body = feed_json(service.similar(request), debug)
    body.pop("user_id")
    body["item_id"] = item_id
    return JSONBytes(body)
