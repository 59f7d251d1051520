"""GET /trending and GET /items/{item_id}: live state as it stands."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Path, Query

from features.errors import StoreUnavailableError
from features.keys import GLOBAL, Keys
from serving.api_models import INVALID, CatalogItem, Gone, Trending, unavailable
from serving.deps import ResourcesDep, SettingsDep
from serving.responses import JSONBytes, error
from streams.schema import PATH_ID_PATTERN

router = APIRouter(tags=["catalog"])


#: Units a window may be named in, besides plain seconds.
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def window_names(half_lives: list[float]) -> dict[str, float]:
    """Every name ``window`` accepts, and the half-life it names: the seconds as written by
    ``%g`` ("3600") and each whole count of a unit ("3600s", "60m", "1h"). The OpenAPI spec
    lists exactly these, so a client generated from it sends nothing the server refuses.

    Examples:
        >>> sorted(window_names([3600.0]))
        ['1h', '3600', '3600s', '60m']
    """
    names: dict[str, float] = {}
    for h in half_lives:
        names[f"{h:g}"] = h
        for unit, seconds in _UNITS.items():
            count = h / seconds
            if count >= 1 and count == int(count):
                names[f"{int(count)}{unit}"] = h
    return names


@router.get(
    "/trending",
    response_class=JSONBytes,
    responses={200: {"model": Trending}, **INVALID},
)
def get_trending(
    resources: ResourcesDep,
    settings: SettingsDep,
    window: Annotated[
        str | None, Query(max_length=32, description="Half-life, e.g. 1h or 86400")
    ] = None,
    category: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    k: Annotated[int | None, Query(ge=1, description="How many items")] = None,
) -> JSONBytes:
    """Top items by decayed score for one half-life, overall or in one category, with the
    items whose short-term rate outruns their long-term one marked ``rising``."""
    half_lives = resources.features.half_lives_s
    half_life = half_lives[0] if window is None else window_names(half_lives).get(window)
    if half_life is None:
        named = ", ".join(f"{h:g}" for h in half_lives)
        return error(422, ["query", "window"], f"window must be one of the half-lives: {named} s")
    size = k or settings.default_k
    if size > settings.max_k:
        return error(422, ["query", "k"], f"k must be <= {settings.max_k}")
    scope = GLOBAL if category is None else Keys.category_scope(category)
    now = time.time()
    live = resources.live
    try:
        ranked = live.trending_list(half_life, scope, size, now)
        rising = dict(live.rising(scope, size * 2, now))
    except StoreUnavailableError:
        return JSONBytes(
            {"window_s": half_life, "category": category, "degraded": True, "items": []}
        )
    return JSONBytes(
        {
            "window_s": half_life,
            "category": category,
            "degraded": False,
            "items": [
                {"item_id": i, "score": s, "rising": i in rising, "rise": rising.get(i)}
                for i, s in ranked
            ],
        }
    )


@router.get(
    "/items/{item_id}",
    response_class=JSONBytes,
    responses={
        200: {"model": CatalogItem},
        404: {
            "model": Gone,
            "description": "No such item in the catalog; `deleted_at` when it was deleted",
        },
        **INVALID,
        **unavailable("The store is unreachable"),
    },
)
def get_item(
    item_id: Annotated[str, Path(min_length=1, max_length=256, pattern=PATH_ID_PATTERN)],
    resources: ResourcesDep,
) -> JSONBytes:
    """An item's catalog record, availability, and live popularity."""
    live = resources.live
    try:
        record = live.item_record(item_id)
        meta = record.meta
        if meta is None:
            return error(404, ["path", "item_id"], f"unknown item {item_id!r}")
        if record.deleted_at_ms is not None:
            detail = [{"loc": ["path", "item_id"], "msg": f"item {item_id!r} was deleted"}]
            body = {"detail": detail, "deleted_at": record.deleted_at_ms}
            return JSONBytes(body, status_code=404)
        popularity = live.popularity(item_id, time.time())
    except StoreUnavailableError as exc:
        return JSONBytes({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})
    index = live.index
    return JSONBytes(
        {
            "item_id": item_id,
            "category": meta.category,
            "creator": meta.creator,
            "created_at": meta.created_at_ms,
            "available": meta.available,
            "in_index": index is not None and item_id in index,
            "popularity": {
                f"trending_{live.short_half_life:g}s": popularity.short,
                f"trending_{live.long_half_life:g}s": popularity.long,
                "all_time": popularity.all_time,
            },
        }
    )
