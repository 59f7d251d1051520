"""Benchmarks run on topics, Redis keys and consumer groups of their own, and remove them."""

from __future__ import annotations

import logging

from confluent_kafka.admin import AdminClient

from features.sharding import namespace_pattern
from features.stores.redis_store import RedisStore
from streamrec.settings import Settings
from streams.io.kafka import client_config

log = logging.getLogger(__name__)


def isolated_settings(settings: Settings, run_id: str) -> Settings:
    """Settings whose topics, keys and groups belong to this run only."""
    prefix = f"bench-{run_id}"
    topics = settings.topics.model_copy(
        update={
            "interactions": f"{prefix}.interactions",
            "items": f"{prefix}.items",
            "impressions": f"{prefix}.impressions",
            "dead_letter": f"{prefix}.dead-letter",
        }
    )
    worker = settings.worker.model_copy(update={"group_id": f"{prefix}-worker"})
    return settings.model_copy(update={"topics": topics, "worker": worker, "namespace": prefix})


def reads_from(settings: Settings) -> str:
    """Where the API of a run reads live state: "replica" when one is configured."""
    return "replica" if settings.redis_replica_url else "primary"


def cleanup(settings: Settings) -> None:
    """Delete the run's topics and Redis keys (best effort: a benchmark result matters more)."""
    admin = AdminClient(client_config(settings.kafka_bootstrap, settings.kafka_config))
    names = [
        settings.topics.interactions,
        settings.topics.items,
        settings.topics.impressions,
        settings.topics.dead_letter,
    ]
    for future in admin.delete_topics(names, operation_timeout=30).values():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort
            log.warning("could not delete a bench topic: %s", exc)
    store = RedisStore(settings.redis_url)
    store.flush_namespace(namespace_pattern(settings.namespace))
    store.close()
