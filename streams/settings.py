"""Settings owned by the stream layer: topic layout and the worker's batching and limits."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TopicSettings(BaseModel):
    """Kafka topic names and layout."""

    # Topic of user interactions (view, click, ...), keyed by user_id.
    interactions: str = Field("streamrec.interactions", min_length=1, max_length=249)
    # Compacted topic of item upserts and deletes, keyed by item_id.
    items: str = Field("streamrec.items", min_length=1, max_length=249)
    # Topic of served feeds (impressions), keyed by user_id.
    impressions: str = Field("streamrec.impressions", min_length=1, max_length=249)
    # Dead-letter topic: rejected messages with their origin and reason.
    dead_letter: str = Field("streamrec.dead-letter", min_length=1, max_length=249)
    # Partitions of each topic at creation.
    partitions: int = Field(6, ge=1, le=10_000)
    # Replication factor of each topic at creation (1 for a single local broker).
    replication: int = Field(1, ge=1, le=16)

    @property
    def worker_inputs(self) -> list[str]:
        """The topics a worker consumes. Interactions and impressions are both keyed by user
        and have the same partition count, so a user's clicks and feeds share a partition
        number."""
        return [self.interactions, self.items, self.impressions]


class WorkerSettings(BaseModel):
    """How the worker consumes and applies events."""

    # Kafka consumer group of the workers.
    group_id: str = Field("streamrec-worker", min_length=1)
    # Most messages taken from the consumer in one batch.
    batch_size: int = Field(5000, ge=1, le=1_000_000)
    # Target time of one batch commit of a Kafka worker (a Lua script, during which Redis
    # answers none of the feed API's reads), in milliseconds: batches shrink below batch_size
    # to keep commits near it (0: always batch_size; the embedded mode always is, so that
    # a replay cuts the same batches).
    max_commit_ms: float = Field(50.0, ge=0, le=60_000)
    # Longest wait for a batch to fill, in milliseconds. Short keeps events fresh when the
    # worker is caught up; when it is behind, batches fill up at once anyway.
    batch_timeout_ms: int = Field(5, ge=1, le=60_000)
    # Largest accepted message, in bytes; larger ones go to the dead-letter topic.
    max_payload_bytes: int = Field(64 * 1024, ge=256, le=16 * 1024 * 1024)
    # How far in the future an event time may be, in milliseconds, before it is rejected.
    max_future_ms: int = Field(5 * 60 * 1000, ge=0)
    # Events older than the partition's highest applied event time minus this are too late
    # to count at their event time and go to the dead-letter topic.
    allowed_lateness_ms: int = Field(3_600_000, ge=0)
    # An interaction whose event_id the partition applied within this much event time is a
    # re-send (a retried POST, a replay run twice) and is dead-lettered as a duplicate. Costs
    # ~100 bytes of Redis per event in the window (0: off, offsets alone deduplicate).
    dedup_window_ms: int = Field(2 * 60 * 1000, ge=0, le=7 * 86_400_000)
    # Longest interactions and impressions wait for the catalog (the items topic) to be
    # applied up to its end before they go on regardless (streams/worker/catalog_gate.py): an items
    # partition nobody applies must not stall the stream for good.
    catalog_wait_ms: int = Field(120_000, ge=0, le=86_400_000)
    # Seconds between heartbeats the worker writes for /health.
    heartbeat_s: float = Field(1.0, gt=0, le=300)
    # Port of the worker's Prometheus /metrics (0: none). Several workers on one host each
    # need their own.
    metrics_port: int = Field(0, ge=0, le=65535)
