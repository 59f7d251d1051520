"""Local Kafka and Redis for development and tests: ``streamrec services up|down|status``.

A service is *managed* (started and stopped here) only when the user gave no endpoint of
their own through ``STREAMREC_KAFKA_BOOTSTRAP`` or ``STREAMREC_REDIS_URL``. Given services
are only checked, never touched. Every file we write lives under ``services.data_dir``::

    kafka/libs-<version>/     broker jars, fetched once with Maven
    kafka/data/               the broker's log dirs, kept across restarts
    kafka/server.properties   kafka/log4j2.properties   kafka/kafka.log   kafka/kafka.pid
    redis/                    append-only file, redis.log, redis.pid

The package, by concept: ``common`` (the file layout, the status record, the error, endpoint
helpers), ``process`` (pid files, spawning, signalling, the lock), ``kafka`` and ``redis``
(how each is configured, started and probed), and ``lifecycle`` (``up``, ``down``, ``status``).
"""

from __future__ import annotations

from streamrec.services.common import (
    KAFKA_ENV,
    REDIS_ENV,
    Layout,
    ServiceError,
    ServiceStatus,
    bootstrap_addresses,
    is_managed,
    layout,
    parse_host_port,
    redact_url,
)
from streamrec.services.kafka import (
    KAFKA_JVM_OPTS,
    cluster_id,
    kafka_command,
    kafka_server_properties,
    new_cluster_id,
    storage_format_command,
)
from streamrec.services.lifecycle import (
    ensure_services,
    services_down,
    services_status,
    services_up,
)
from streamrec.services.process import failure_reason
from streamrec.services.redis import redis_command, replica_command

__all__ = [
    "KAFKA_ENV",
    "KAFKA_JVM_OPTS",
    "REDIS_ENV",
    "Layout",
    "ServiceError",
    "ServiceStatus",
    "bootstrap_addresses",
    "cluster_id",
    "ensure_services",
    "failure_reason",
    "is_managed",
    "kafka_command",
    "kafka_server_properties",
    "layout",
    "new_cluster_id",
    "parse_host_port",
    "redact_url",
    "redis_command",
    "replica_command",
    "services_down",
    "services_status",
    "services_up",
    "storage_format_command",
]
