"""What every part of the services manager shares: the file layout, the status record, the
error, and the helpers that read endpoints and environment."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from streamrec.settings import ServicesSettings

# Every module logs as "streamrec.services", the name the CLI's log lines have always shown.
log = logging.getLogger("streamrec.services")

#: Environment variables whose presence means "the user runs this service, not us".
KAFKA_ENV = "STREAMREC_KAFKA_BOOTSTRAP"
REDIS_ENV = "STREAMREC_REDIS_URL"


@dataclass(frozen=True)
class ServiceStatus:
    """What one service is doing, as `streamrec services` reports it."""

    name: str
    managed: bool
    running: bool
    endpoint: str
    detail: str


class ServiceError(RuntimeError):
    """A local service could not be fetched, started or stopped."""


@dataclass(frozen=True)
class Layout:
    """Where each file of the local services lives; every path is absolute."""

    root: Path
    kafka_version: str
    kafka_dir: Path
    kafka_libs: Path
    kafka_data: Path
    kafka_config: Path
    kafka_log4j: Path
    kafka_log: Path
    kafka_pid: Path
    maven_log: Path
    redis_dir: Path
    redis_log: Path
    redis_pid: Path
    replica_dir: Path
    replica_log: Path
    replica_pid: Path
    lock: Path


def layout(services: ServicesSettings) -> Layout:
    """The file layout under ``services.data_dir``, resolved against the working directory."""
    root = services.data_dir.expanduser().resolve()
    kafka, redis_dir = root / "kafka", root / "redis"
    return Layout(
        root=root,
        kafka_version=services.kafka_version,
        kafka_dir=kafka,
        kafka_libs=kafka / f"libs-{services.kafka_version}",
        kafka_data=kafka / "data",
        kafka_config=kafka / "server.properties",
        kafka_log4j=kafka / "log4j2.properties",
        kafka_log=kafka / "kafka.log",
        kafka_pid=kafka / "kafka.pid",
        maven_log=kafka / "maven.log",
        redis_dir=redis_dir,
        redis_log=redis_dir / "redis.log",
        redis_pid=redis_dir / "redis.pid",
        replica_dir=root / "redis-replica",
        replica_log=root / "redis-replica" / "redis.log",
        replica_pid=root / "redis-replica" / "redis.pid",
        lock=root / "services.lock",
    )


def is_managed(env_var: str, environ: Mapping[str, str]) -> bool:
    """True when the user gave no endpoint of their own, so the service is ours to run."""
    return not environ.get(env_var, "").strip()


def parse_host_port(address: str) -> tuple[str, int]:
    """Split ``host:port`` (also ``[v6]:port`` and ``scheme://host:port``) into its parts."""
    rest = address.strip().rpartition("://")[2]
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range in {address!r}")
    return host.removeprefix("[").removesuffix("]"), port


def bootstrap_addresses(bootstrap: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a comma-separated Kafka bootstrap list."""
    return [parse_host_port(part) for part in bootstrap.split(",") if part.strip()]


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
