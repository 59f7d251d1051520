"""The dashboard's endpoints: the page, its history, the live stream, a user's session.

All read-only: the router declares GET only, so any write answers 405.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from features.errors import StoreUnavailableError
from serving.api_models import INVALID, SNAPSHOT_EVENT, History, UserSession, unavailable
from serving.dashboard.sampler import DashboardSampler
from serving.deps import ResourcesDep
from serving.responses import JSONBytes

STATIC = Path(__file__).parent / "static"
KEEPALIVE_S = 15.0
CENTROIDS_TTL_S = 60.0

router = APIRouter(tags=["dashboard"])


def _sampler(request: Request) -> DashboardSampler:
    sampler: DashboardSampler = request.app.state.dashboard
    return sampler


@router.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    """The dashboard is the front page."""
    return RedirectResponse("/dashboard")


@router.get("/dashboard", include_in_schema=False)
def page() -> FileResponse:
    """The dashboard page."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/dashboard/static/{name}", include_in_schema=False)
def static(name: Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_.-]+$")]) -> Response:
    """The page's script and style sheet (nothing else, nothing outside the folder)."""
    path = STATIC / name
    if name.startswith(".") or not path.is_file():
        return JSONBytes({"detail": [{"loc": ["path", "name"], "msg": "no such file"}]}, 404)
    return FileResponse(path)


@router.get("/dashboard/history", response_class=JSONBytes, responses={200: {"model": History}})
def history(request: Request) -> JSONBytes:
    """The last few minutes of snapshots, oldest first."""
    return JSONBytes({"snapshots": list(_sampler(request).history)})


@router.get(
    "/dashboard/events",
    # Only for the document: a Response the endpoint returns goes out as it is.
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`retry: 2000`, then an `event: snapshot` whose `data` is one "
            "Snapshot as JSON every sampling interval, and a `: keep-alive` comment after "
            f"{KEEPALIVE_S:g} s without one; it never ends",
            "content": {"text/event-stream": {"schema": SNAPSHOT_EVENT}},
        },
        **unavailable("Too many dashboard clients are connected"),
    },
)
async def events(request: Request) -> Response:
    """Snapshots as Server-Sent Events; a slow client loses old snapshots, never blocks."""
    hub = _sampler(request).hub
    queue = hub.subscribe()
    if queue is None:
        return JSONBytes({"detail": "too many dashboard clients"}, 503, {"Retry-After": "5"})

    async def stream() -> Any:
        try:
            yield b"retry: 2000\n\n"
            while not await request.is_disconnected():
                try:
                    data = await asyncio.wait_for(queue.get(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                yield b"event: snapshot\ndata: " + data + b"\n\n"
        finally:
            hub.unsubscribe(queue)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.get(
    "/dashboard/user/{user_id}",
    response_class=JSONBytes,
    responses={200: {"model": UserSession}, **INVALID, **unavailable("The store is unreachable")},
)
def user(
    user_id: Annotated[str, PathParam(min_length=1, max_length=256)],
    request: Request,
    resources: ResourcesDep,
) -> JSONBytes:
    """A user's session embedding's nearest categories and their latest items."""
    live = resources.live
    try:
        state = live.user_state(user_id, 10, time.time())
    except StoreUnavailableError as exc:
        return JSONBytes({"detail": str(exc)}, 503, {"Retry-After": "5"})
    metas = live.metas([i for i, _ in state.recent])
    nearest: list[dict[str, Any]] = []
    centroids = _centroids(request, resources)
    if state.session is not None and centroids:
        names = sorted(centroids)
        sims = np.stack([centroids[n] for n in names]) @ state.session
        order = np.argsort(-sims)[:5]
        nearest = [{"category": names[i], "similarity": float(sims[i])} for i in order]
    return JSONBytes(
        {
            "user_id": user_id,
            "has_session": state.session is not None,
            "session_categories": nearest,
            "recent": [
                {"item_id": i, "category": m.category if m else None}
                for (i, _), m in zip(state.recent, metas, strict=True)
            ],
        }
    )


def _centroids(request: Request, resources: ResourcesDep) -> dict[str, np.ndarray]:
    """Unit mean vector of each category's indexed items, recomputed once a minute."""
    cached = getattr(request.app.state, "category_centroids", None)
    if cached is not None and time.monotonic() - cached[0] < CENTROIDS_TTL_S:
        centroids: dict[str, np.ndarray] = cached[1]
        return centroids
    replica = resources.replica
    centroids = {}
    if replica is not None:
        by_category: dict[str, list[str]] = defaultdict(list)
        for item, meta in list(replica.catalog.items()):
            if meta.category and meta.available:
                by_category[meta.category].append(item)
        for category, items in by_category.items():
            mean = replica.index.vectors(items).mean(axis=0)
            norm = float(np.linalg.norm(mean))
            if norm > 0:
                centroids[category] = (mean / norm).astype(np.float32)
    request.app.state.category_centroids = (time.monotonic(), centroids)
    return centroids
