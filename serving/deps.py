"""FastAPI dependencies, as ``Annotated`` aliases the routers use."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from serving.feed import FeedService
from serving.metrics import FeedMetrics
from serving.resources import Resources
from serving.security import require_read, require_write
from serving.settings import ServingSettings


def _resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


def _feed_service(request: Request) -> FeedService:
    service: FeedService = request.app.state.feed_service
    return service


def _metrics(request: Request) -> FeedMetrics:
    metrics: FeedMetrics = request.app.state.metrics
    return metrics


def _settings(request: Request) -> ServingSettings:
    settings: ServingSettings = request.app.state.settings
    return settings


ResourcesDep = Annotated[Resources, Depends(_resources)]
FeedServiceDep = Annotated[FeedService, Depends(_feed_service)]
SettingsDep = Annotated[ServingSettings, Depends(_settings)]
MetricsDep = Annotated[FeedMetrics, Depends(_metrics)]

#: Router dependencies: a read key when ``require_read_key``, a write key on every write.
ReadAccess = Depends(require_read)
WriteAccess = Depends(require_write)
