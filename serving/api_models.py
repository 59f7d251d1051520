"""The API's response bodies as pydantic models, and the error answers the routes share.

They exist for the OpenAPI document only: the routes build plain dicts and return them as
orjson bytes (`JSONBytes`), never through these models, so documenting a body costs the hot
path nothing. `tests/unit/test_api_docs.py` checks real responses against the document.

A field typed ``X | None`` is always present and may be null; one typed
``X | SkipJsonSchema[None] = None`` may be absent but is never null.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from serving.security import API_KEY_HEADER

#: FastAPI's ``responses=``: status code to OpenAPI response object (plus ``model``).
Responses = dict[int | str, dict[str, Any]]


# --- errors ----------------------------------------------------------------------------------


class FieldError(BaseModel):
    """What is wrong, and where: `loc` names the part of the request at fault."""

    loc: list[str | int] = Field(
        min_length=1, description='e.g. ["query", "k"] or ["body", 0, "user_id"]'
    )
    msg: str
    type: str | SkipJsonSchema[None] = Field(
        None, description="The validator's error code (request validation errors only)"
    )


class ErrorBody(BaseModel):
    """A 4xx answer, in FastAPI's shape."""

    detail: list[FieldError] = Field(min_length=1)


class Gone(ErrorBody):
    """A 404 for an item: unknown, or deleted (then when, by its delete event's time)."""

    deleted_at: int | SkipJsonSchema[None] = Field(
        None, description="Milliseconds since the epoch, when the item was deleted"
    )


class Unavailable(BaseModel):
    """A 503: what the API depends on and cannot reach right now; try again later."""

    detail: str


class EventsRefused(Unavailable):
    """A 503 of POST /events or /items: the producer buffer stayed full, and nothing of the
    body was taken, so sending the same body again duplicates nothing."""

    accepted: Literal[0]


def _retry_after(meaning: str) -> dict[str, Any]:
    return {
        "Retry-After": {
            "description": meaning,
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        }
    }


def unavailable(description: str, model: type[BaseModel] = Unavailable) -> Responses:
    """A 503 that asks the client to come back after ``Retry-After`` seconds."""
    return {
        503: {
            "model": model,
            "description": description,
            "headers": _retry_after("Seconds to wait before trying again"),
        }
    }


#: Every operation with parameters: FastAPI's request validation and the routes' own checks.
INVALID: Responses = {
    422: {"model": ErrorBody, "description": "A parameter is invalid; `loc` names it"}
}

#: POST /events and /items: their body is read, bounded and validated by the route itself.
BODY_ERRORS: Responses = {
    400: {"model": ErrorBody, "description": "Content-Length is not an integer"},
    413: {
        "model": ErrorBody,
        "description": "The body is over `max_body_bytes`, or holds more events than the "
        "producer buffer could ever take",
    },
    422: {
        "model": ErrorBody,
        "description": "Not JSON, or an event breaks schema v1; `loc` names the field "
        '(`["body", 3, "ts"]` for the fourth event of an array)',
    },
}

#: The access policy (`serving.security`) of every router included with ReadAccess or
#: WriteAccess: its errors name the key header.
ACCESS_ERRORS: Responses = {
    401: {
        "model": ErrorBody,
        "description": f"A key is needed (in {API_KEY_HEADER} or Authorization: Bearer) and "
        "none was given: always for writes unless anonymous writes are allowed, for reads "
        "when `require_read_key`",
        "headers": {
            "WWW-Authenticate": {"required": True, "schema": {"type": "string"}},
        },
    },
    403: {
        "model": ErrorBody,
        "description": "The key given is not one this operation takes (a write key for "
        "writes; a read or a write key for reads)",
    },
    429: {
        "model": ErrorBody,
        "description": "The client's rate limit is spent (per key, or per address without one)",
        "headers": _retry_after("Seconds until the client's bucket has a token again"),
    },
}


# --- POST /events, /items --------------------------------------------------------------------


class Accepted(BaseModel):
    """The events were validated and queued for the workers."""

    accepted: int = Field(ge=0, description="How many events of the body were queued (all)")


# --- GET /feed, /similar ---------------------------------------------------------------------


class FeedSlot(BaseModel):
    """One item of a feed, in the order served."""

    item_id: str
    score: float
    source: str = Field(description="The candidate source the ordering policy chose this slot")
    sources: list[str] = Field(description="Every source that proposed the item, sorted")
    propensity: float = Field(description="Probability the policy chose `source` for this slot")
    category: str | None
    creator: str | None


class SourceTrace(BaseModel):
    """What one candidate source returned, and how long it took."""

    candidates: int
    ms: float | SkipJsonSchema[None] = None
    timed_out: bool | SkipJsonSchema[None] = Field(None, description="Over its time budget")
    error: bool | SkipJsonSchema[None] = Field(None, description="It raised, and was left out")


class ScorerTrace(BaseModel):
    """Which model scored the candidates (empty for similar items and degraded feeds)."""

    model: Literal["ranker", "heuristic"] | SkipJsonSchema[None] = None
    examples: int | SkipJsonSchema[None] = None


class OrderingTrace(BaseModel):
    """The bandit's ordering (empty for similar items and degraded feeds)."""

    segment: str | SkipJsonSchema[None] = None
    slots: int | SkipJsonSchema[None] = None
    skipped_by_caps: int | SkipJsonSchema[None] = None
    first_slot_probabilities: dict[str, float] | SkipJsonSchema[None] = Field(
        None, description="Per source, the probability of being chosen for the first slot"
    )


class FeedTrace(BaseModel):
    """What each stage of the funnel did (`debug=true` only)."""

    stages_ms: dict[str, float]
    sources: dict[str, SourceTrace]
    filters_removed: dict[str, int]
    scorer: ScorerTrace
    ordering: OrderingTrace


class Feed(BaseModel):
    """A user's feed. Clicks on it carry `request_id` back in POST /events."""

    user_id: str
    request_id: str
    degraded: bool = Field(description="Live state was unreachable: the last good trending list")
    segment: str = Field(description="The bandit's context segment")
    policy_version: str
    items: list[FeedSlot]
    trace: FeedTrace | SkipJsonSchema[None] = None


class Similar(BaseModel):
    """Items like `item_id`, best first."""

    item_id: str
    request_id: str
    degraded: bool = Field(description="Live state was unreachable: no items")
    segment: Literal["similar"]
    policy_version: Literal["similar"]
    items: list[FeedSlot]
    trace: FeedTrace | SkipJsonSchema[None] = None


# --- GET /trending, /items/{item_id} ---------------------------------------------------------


class TrendingItem(BaseModel):
    """One trending item."""

    item_id: str
    score: float = Field(description="Decayed interaction count")
    rising: bool
    rise: float | None = Field(description="Short-term over long-term rate, when rising")


class Trending(BaseModel):
    """Top items of one half-life, best first."""

    window_s: float = Field(description="The half-life, in seconds")
    category: str | None
    degraded: bool = Field(description="Live state was unreachable: no items")
    items: list[TrendingItem]


class CatalogItem(BaseModel):
    """An item's catalog record and live popularity."""

    item_id: str
    category: str | None
    creator: str | None
    created_at: int = Field(description="Milliseconds since the epoch")
    available: bool
    in_index: bool = Field(description="In this server's ANN replica")
    popularity: dict[str, float] = Field(
        description="`trending_<half-life>s` for the shortest and longest half-life, and `all_time`"
    )


# --- GET /health -----------------------------------------------------------------------------


class Check(BaseModel):
    """One dependency, up or down."""

    ok: bool
    detail: str


class ReplicaHealth(BaseModel):
    """The Redis read replica the API reads while it keeps up (lag from SET + WAIT probes)."""

    reading: Literal["replica", "primary"] = Field(
        description="Where reads go now: the primary while the replica lags or fails"
    )
    last_ms: float | None = Field(description="Last probe's lag; null: none acknowledged")
    p50_ms: float | None
    p99_ms: float | None
    max_lag_ms: float = Field(description="Lag past which reads go to the primary")
    samples: int
    measured: bool = Field(description="Whether any probe has completed yet")
    unacknowledged: int = Field(description="Probes no replica acknowledged in time")
    failed_reads: int = Field(description="Replica reads that failed over to the primary")


class StoreCheck(Check):
    """The live-state store, and its read replica when one is configured."""

    replica: ReplicaHealth | SkipJsonSchema[None] = None


class WorkerHealth(BaseModel):
    """A worker that sent a heartbeat lately."""

    id: str
    alive: bool
    heartbeat_age_s: float
    applied: int
    dead_lettered: int
    rewinds: int
    lag: dict[str, int] = Field(description="Per topic/partition")
    total_lag: int
    waiting_for_catalog: int = Field(
        0,
        description="Interactions and impressions held until the items topic is applied "
        "up to its end (counted in lag too)",
    )


class Consumers(Check):
    """The stream workers: ok when one of them is alive."""

    workers: list[WorkerHealth]


class IndexHealth(BaseModel):
    """This server's ANN replica of the catalog."""

    ready: bool
    items: int
    phase: str | SkipJsonSchema[None] = None
    applied: int | SkipJsonSchema[None] = None
    skipped: int | SkipJsonSchema[None] = None
    lag: int | None = None
    restored_from_snapshot: bool | SkipJsonSchema[None] = None


class Health(BaseModel):
    """`ok` only when the store, the transport, a worker and the index replica are."""

    status: Literal["ok", "degraded"]
    index: IndexHealth
    store: StoreCheck
    transport: Check
    consumers: Consumers


# --- the dashboard ---------------------------------------------------------------------------


class HalfLife(BaseModel):
    """A trending half-life: its key in `lists` and its label."""

    key: str
    label: str


class TrendingRow(BaseModel):
    """A dashboard trending row, with its move since the last snapshot."""

    item_id: str
    score: float
    rank: int
    previous_rank: int | None
    rising: bool
    spark: list[float] = Field(description="Its recent scores, oldest first")


class TrendingLists(BaseModel):
    """Per half-life key, per scope (global or a category), the top items."""

    half_lives: list[HalfLife]
    categories: list[str]
    lists: dict[str, dict[str, list[TrendingRow]]]


class Percentiles(BaseModel):
    """p50 and p99 (null without observations)."""

    p50: float | None
    p99: float | None


class StreamSummary(BaseModel):
    """The workers' event rates, lag and freshness."""

    events_per_s: dict[str, float]
    events_per_s_total: float
    lag: dict[str, int]
    lag_total: int
    dead_lettered: int
    freshness_ms: Percentiles
    workers: int


class FunnelSummary(BaseModel):
    """Recent feeds: rate, latency, per-stage times, mean candidates and removals."""

    requests_per_s: float
    latency_ms: Percentiles
    stage_ms: dict[str, Percentiles]
    candidates: dict[str, float]
    removed: dict[str, float]


class SourceArm(BaseModel):
    """One source in one segment: its share of recent slots and its posterior."""

    share: float
    ctr: float | None
    shown: float


class BanditSummary(BaseModel):
    """Per segment, per source."""

    segments: dict[str, dict[str, SourceArm]]


class Snapshot(BaseModel):
    """One dashboard sample of the live state."""

    ts: int = Field(description="Milliseconds since the epoch")
    trending: TrendingLists
    stream: StreamSummary
    funnel: FunnelSummary
    bandit: BanditSummary


class DegradedSnapshot(BaseModel):
    """A sample taken while the store was unreachable."""

    ts: int
    degraded: str = Field(description="Why")


class History(BaseModel):
    """The last few minutes of snapshots, oldest first."""

    snapshots: list[Snapshot | DegradedSnapshot]


class CategorySimilarity(BaseModel):
    """A category near the user's session embedding."""

    category: str
    similarity: float


class RecentItem(BaseModel):
    """An item the user interacted with lately."""

    item_id: str
    category: str | None


class UserSession(BaseModel):
    """A user's session: its nearest categories and latest items."""

    user_id: str
    has_session: bool
    session_categories: list[CategorySimilarity] = Field(description="Nearest first, at most 5")
    recent: list[RecentItem]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


#: One event of GET /dashboard/events. Before OpenAPI 3.2's ``itemSchema``, the ``schema`` of
#: a ``text/event-stream`` describes each event (as schemathesis reads it); the snapshot
#: models are in the document through ``History``.
SNAPSHOT_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"const": "snapshot"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"anyOf": [_ref(Snapshot), _ref(DegradedSnapshot)]},
        },
    },
}
