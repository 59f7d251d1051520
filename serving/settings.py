"""Settings owned by the serving layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, Field, SecretStr, model_validator

#: An API key: long enough that guessing it is hopeless; shown as ``**********`` when printed.
ApiKey = Annotated[SecretStr, Field(min_length=16, max_length=512)]
#: A browser origin allowed by CORS: ``*`` or scheme://host[:port], nothing after it.
CorsOrigin = Annotated[str, Field(pattern=r"^(\*|https?://[^/\s?#]+)$")]


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
    # Keys that may POST /events and /items (header X-API-Key or Authorization: Bearer).
    write_api_keys: list[ApiKey] = Field(default_factory=list, max_length=64)
    # Writes without a key when no write key is set: loopback = only while bound to loopback.
    unauthenticated_writes: Literal["loopback", "never", "always"] = "loopback"
    # Keys that may read when require_read_key is on (write keys may read too).
    read_api_keys: list[ApiKey] = Field(default_factory=list, max_length=64)
    # Whether feed, similar, trending, items, metrics and the dashboard need a key.
    require_read_key: bool = False
    # Requests per second each key (without one: each client address) may sustain; 0: no limit.
    rate_limit_per_s: float = Field(500.0, ge=0)
    # Requests a key or address may make at once before rate_limit_per_s applies.
    rate_limit_burst: int = Field(1000, ge=1)
    # Keys and addresses whose rate-limit state is kept; the least recently seen go first.
    rate_limit_max_clients: int = Field(10_000, ge=1, le=10_000_000)
    # With a read replica (redis_replica_url): the lag past which reads go to the primary.
    max_replica_lag_ms: float = Field(1000.0, gt=0)
    # With a read replica: ms between lag probes (a SET and a WAIT on the primary each).
    replica_probe_interval_ms: int = Field(100, ge=10, le=60_000)
    # Browser origins allowed to call the API (CORS); empty: no CORS headers at all.
    cors_origins: list[CorsOrigin] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _keys_consistent(self) -> Self:
        if self.require_read_key and not (self.read_api_keys or self.write_api_keys):
            raise ValueError("require_read_key needs read_api_keys or write_api_keys")
        if self.unauthenticated_writes == "always" and self.write_api_keys:
            raise ValueError("unauthenticated_writes=always contradicts write_api_keys")
        return self
