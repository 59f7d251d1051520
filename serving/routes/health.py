"""GET /health."""

from __future__ import annotations

from fastapi import APIRouter

from serving.api_models import Health
from serving.deps import ResourcesDep, SettingsDep
from serving.health import health_report
from serving.responses import JSONBytes

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_class=JSONBytes,
    responses={
        200: {"model": Health},
        503: {"model": Health, "description": "The same report, when anything is down"},
    },
)
def get_health(resources: ResourcesDep, settings: SettingsDep) -> JSONBytes:
    """Store, transport and consumer state; 503 when any of them is down."""
    report = health_report(resources, worker_stale_s=settings.worker_stale_s)
    return JSONBytes(report, status_code=200 if report["status"] == "ok" else 503)
