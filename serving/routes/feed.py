"""GET /feed/{user_id}."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from serving.deps import FeedServiceDep, SettingsDep
from serving.responses import JSONBytes, error

router = APIRouter(tags=["feed"])


@router.get("/feed/{user_id}", response_class=JSONBytes)
def get_feed(
    request: Request,
    user_id: Annotated[str, Path(min_length=1, max_length=256)],
    service: FeedServiceDep,
    settings: SettingsDep,
    k: Annotated[int | None, Query(ge=1, description="Feed length")] = None,
) -> JSONBytes:
    """The user's feed: the top decayed-popular items they have not seen yet."""
    size = k or settings.default_k
    if size > settings.max_k:
        return error(422, ["query", "k"], f"k must be <= {settings.max_k}")
    feed = service.feed(user_id, size, now_s=time.time())
    return JSONBytes(
        {
            "user_id": feed.user_id,
            "degraded": feed.degraded,
            "items": [
                {"item_id": i.item_id, "score": i.score, "source": i.source} for i in feed.items
            ],
        }
    )
