"""Settings owned by the serving layer."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class ServingSettings(BaseModel):
    """HTTP server and feed defaults."""

    # Interface the API binds to.
    host: str = Field("127.0.0.1", min_length=1)
    # Port the API listens on.
    port: int = Field(8000, ge=1, le=65535)
    # Feed length when the request gives no k.
    default_k: int = Field(20, ge=1, le=1000)
    # Largest k a request may ask for.
    max_k: int = Field(200, ge=1, le=10_000)
    # Largest accepted POST body, in bytes.
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # Where this process snapshots its ANN replica of the catalog (none: rebuild on start).
    index_snapshot_dir: Path | None = Field(Path(".streamrec/index-replica"))
    # Seconds between replica snapshots.
    index_snapshot_every_s: float = Field(60.0, gt=0)
    # A worker heartbeat older than this many seconds makes /health report it stale.
    worker_stale_s: float = Field(15.0, gt=0)
    # Seconds between dashboard snapshots (what the page's live updates lag by, at most).
    dashboard_interval_s: float = Field(0.5, ge=0.05, le=60)
