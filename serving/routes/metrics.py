"""GET /metrics for Prometheus."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from serving.deps import MetricsDep
from serving.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text exposition format",
            "content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
        }
    },
)
def get_metrics(metrics: MetricsDep) -> Response:
    """Per-stage latency, candidates per source, removals per filter, slots per source."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE)
