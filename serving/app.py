"""The FastAPI application factory."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline

from serving.api_models import ACCESS_ERRORS
from serving.dashboard import routes as dashboard
from serving.dashboard.sampler import DashboardSampler
from serving.deps import ReadAccess, WriteAccess
from serving.feed import FeedService
from serving.funnel.funnel import Funnel
from serving.http_metrics import ResponseCounter
from serving.metrics import FeedMetrics
from serving.openapi_live import LiveLimits, apply_limits, drop_unrequired_security
from serving.request_context import RequestIdMiddleware
from serving.resources import Resources
from serving.responses import JSONBytes
from serving.routes import catalog, events, feed, health, metrics
from serving.security import API_KEY_HEADER, AccessPolicy
from serving.settings import ServingSettings
from streams.schema import schema_components

log = logging.getLogger(__name__)


def create_app(settings: ServingSettings, build_resources: Callable[[], Resources]) -> FastAPI:
    """Build the API. ``build_resources`` runs in the lifespan, so importing costs nothing."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        level, line = app.state.access.describe_writes(settings.host)
        log.log(level, "%s", line)
        resources = build_resources()
        app.state.resources = resources
        funnel = Funnel(resources.live, resources.funnel, resources.learning)
        app.state.feed_service = FeedService(funnel, resources.sink, app.state.metrics)
        sampler = DashboardSampler(
            resources,
            app.state.metrics,
            interval_s=settings.dashboard_interval_s,
            worker_stale_s=settings.worker_stale_s,
        )
        app.state.dashboard = sampler
        sampler.start()
        try:
            yield
        finally:
            sampler.stop()
            funnel.close()
            resources.close()

    # Swagger UI and ReDoc from local files (the wheel's), never a CDN: /docs works offline.
    app = FastAPIOffline(
        title="streamrec",
        summary="Real-time recommendations from an event stream.",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JSONBytes,
    )
    app.state.settings = settings
    app.state.metrics = FeedMetrics()
    app.add_middleware(ResponseCounter, counter=app.state.metrics.responses)
    app.add_middleware(RequestIdMiddleware)
    app.state.access = AccessPolicy.from_settings(settings)
    # Every router and who may call it. /health stays open: load balancers and orchestrators
    # probe it without credentials, and it tells nothing beyond up or down and lag.
    app.include_router(events.router, dependencies=[WriteAccess], responses=ACCESS_ERRORS)
    for router in (feed.router, catalog.router, metrics.router, dashboard.router):
        app.include_router(router, dependencies=[ReadAccess], responses=ACCESS_ERRORS)
    app.include_router(health.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[API_KEY_HEADER, "Authorization", "Content-Type"],
            max_age=600,
        )

    base: list[dict[str, Any]] = []  # the configuration's spec, built on first use

    def openapi() -> dict[str, Any]:
        if not base:
            spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            components.update(schema_components("#/components/schemas/{name}"))
            policy: AccessPolicy = app.state.access
            writes = {getattr(r, "path", ""): policy.anonymous_writes for r in events.router.routes}
            drop_unrequired_security(spec, writes, policy.anonymous_reads)
            base.append(spec)
        spec = copy.deepcopy(base[0])
        resources: Resources | None = getattr(app.state, "resources", None)  # once started
        if resources is not None:
            apply_limits(spec, live_limits(settings, resources), int(time.time() * 1000))
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def live_limits(settings: ServingSettings, resources: Resources) -> LiveLimits:
    """What this server accepts, for :func:`serving.openapi_live.apply_limits`."""
    return LiveLimits(
        max_k=settings.max_k,
        embedding_dim=resources.features.embedding_dim,
        max_future_ms=resources.validator.max_future_ms,
        max_late_ms=resources.max_late_ms,
        windows=list(catalog.window_names(resources.features.half_lives_s)),
    )
