"""The ingest path on faust-streaming agents, run in a subprocess by `streamrec bench ingest
--faust`, so the README's choice of runtime rests on a measurement.

The agent takes batches of events and hands them to the very same Worker batch path
(decode, skip applied offsets, processors, one Redis transaction), so only the consumer
runtime differs from the confluent-kafka worker.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faust
import orjson

from features.stores.redis_store import RedisStore
from streamrec.settings import Settings
from streamrec.wiring import build_worker
from streams.io.kafka import RawProducer
from streams.io.transport import RawMessage, TopicPartition


class _PushedSource:
    """Faust owns polling and offset commits; the worker only applies what it is handed."""

    generation = 0

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[RawMessage]:
        return []

    def commit(self, next_offsets: Mapping[TopicPartition, int]) -> None:
        pass

    def lag(self) -> dict[TopicPartition, int]:
        return {}

    def close(self) -> None:
        pass


def run(settings: Settings, total: int, result_file: Path) -> None:
    """Consume ``total`` messages with a faust agent, write the figures as JSON, and exit."""
    store = RedisStore(settings.redis_url)
    dead = RawProducer(settings.kafka_bootstrap, settings.kafka_config)
    worker = build_worker(settings, _PushedSource(), store, dead, worker_id="faust")
    app = faust.App(
        f"{settings.worker.group_id}-faust",
        broker=f"kafka://{settings.kafka_bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        store="memory://",
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=settings.worker.batch_size * 2,
        broker_max_poll_records=settings.worker.batch_size,
        topic_partitions=settings.topics.partitions,
    )
    topic = app.topic(settings.topics.interactions, settings.topics.items, value_type=bytes)
    state: dict[str, Any] = {"seen": 0, "first": None}

    @app.agent(topic)
    async def ingest(stream: Any) -> None:
        async for events in stream.take_events(
            settings.worker.batch_size, within=settings.worker.batch_timeout_ms / 1000.0
        ):
            if state["first"] is None:
                state["first"] = time.perf_counter()
            messages = [
                RawMessage(e.message.topic, e.message.partition, e.message.offset, e.key, e.value)
                for e in events
            ]
            worker.apply_messages(messages)
            state["seen"] += len(messages)
            if state["seen"] >= total:
                seconds = time.perf_counter() - state["first"]
                # Faust takes over stdout for logging, so figures go to a file.
                result_file.write_bytes(
                    orjson.dumps({"seconds": seconds, "applied": worker.stats.applied})
                )
                # Faust has no "stop after N" switch, and the parent only needs the figures.
                os._exit(0)

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    run(Settings.model_validate_json(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
