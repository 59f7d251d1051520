"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from serving.dashboard import routes as dashboard
from serving.dashboard.sampler import DashboardSampler
from serving.feed import FeedService
from serving.funnel.funnel import Funnel
from serving.metrics import FeedMetrics
from serving.resources import Resources
from serving.responses import JSONBytes
from serving.routes import catalog, events, feed, health, metrics
from serving.settings import ServingSettings
from streams.schema import schema_components


def create_app(settings: ServingSettings, build_resources: Callable[[], Resources]) -> FastAPI:
    """Build the API. ``build_resources`` runs in the lifespan, so importing costs nothing."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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

    app = FastAPI(
        title="streamrec",
        summary="Real-time recommendations from an event stream.",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JSONBytes,
    )
    app.state.settings = settings
    app.state.metrics = FeedMetrics()
    routers = (feed.router, catalog.router, events.router, health.router, metrics.router)
    for router in (*routers, dashboard.router):
        app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            components.update(schema_components("#/components/schemas/{name}"))
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
