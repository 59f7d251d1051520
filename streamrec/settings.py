"""The one typed settings tree, read from STREAMREC_* variables and an optional TOML file.

Sections are owned by the packages that use them; this root only assembles them, so that
``features``, ``streams`` and ``serving`` never import the composition root.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from features.settings import FeatureSettings, LearningSettings
from serving.funnel.settings import FunnelSettings, merged_sources
from serving.settings import ServingSettings
from streams.settings import TopicSettings, WorkerSettings

#: Environment variable naming an optional TOML config file.
CONFIG_FILE_ENV = "STREAMREC_CONFIG_FILE"
# The file passed to load_settings(), seen by the settings sources without touching os.environ.
_CONFIG_FILE: ContextVar[str | None] = ContextVar("streamrec_config_file", default=None)


class ServicesSettings(BaseModel):
    """Local Kafka and Redis that `streamrec services up` runs when none are given."""

    # Directory holding the Kafka jars, the broker's log dirs and Redis's files.
    data_dir: Path = Field(Path(".streamrec"))
    # Apache Kafka version whose jars are fetched from Maven Central.
    kafka_version: str = Field("4.1.1", pattern=r"^\d+\.\d+\.\d+$")
    # Port of the local broker's client listener.
    kafka_port: int = Field(9092, ge=1, le=65535)
    # Port of the local broker's KRaft controller listener.
    kafka_controller_port: int = Field(9093, ge=1, le=65535)
    # Port of the local Redis server.
    redis_port: int = Field(6379, ge=1, le=65535)
    # Port of the local Redis read replica (`replicaof` the local server) for the API to
    # read from; none to run no replica.
    redis_replica_port: int | None = Field(6380, ge=1, le=65535)
    # Masters of a local Redis Cluster that `services up` also starts (0: none; `services up
    # --redis-cluster N` sets it for one call), on consecutive ports from the next field.
    redis_cluster_nodes: int = Field(0, ge=0, le=16)
    # Port of the local cluster's first node.
    redis_cluster_port: int = Field(7000, ge=1, le=65535 - 16)
    # Seconds to wait for both services to become ready.
    ready_timeout_s: float = Field(120.0, gt=0)


class Settings(BaseSettings):
    """Everything streamrec can be told, with a default for each field."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMREC_", env_nested_delimiter="__", extra="ignore"
    )

    # Kafka bootstrap servers (host:port[,host:port]).
    kafka_bootstrap: str = Field("localhost:9092", min_length=1)
    # Extra librdkafka properties passed to every client (e.g. SASL/TLS settings).
    kafka_config: dict[str, str] = Field(default_factory=dict)
    # Redis URL of the live-state store.
    redis_url: str = Field(
        "redis://localhost:6379/0", pattern=r"^(redis|rediss|unix|redis\+cluster)://"
    )
    # Shards the namespace's keys are split into, each its own hash tag (Redis Cluster slot):
    # 1 keeps every key under one tag (one Redis); on a cluster, a few per node (e.g. 12 on 3
    # nodes). Recorded in the store at the first worker's start; a mismatch is refused.
    redis_shards: int = Field(1, ge=1, le=1024)
    # Redis URL of a read replica of ``redis_url`` for the API's reads (writes stay on the
    # primary); none: the API reads the primary. `streamrec services up` runs one on 6380.
    redis_replica_url: str | None = Field(None, pattern=r"^(redis|rediss|unix)://")
    # Prefix of every Redis key, so several deployments or test runs can share a server.
    namespace: str = Field("sr", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    topics: TopicSettings = Field(default_factory=TopicSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    learning: LearningSettings = Field(default_factory=LearningSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    funnel: FunnelSettings = Field(default_factory=FunnelSettings)
    services: ServicesSettings = Field(default_factory=ServicesSettings)

    @model_validator(mode="before")
    @classmethod
    def _merge_source_overrides(cls, data: Any) -> Any:
        """``funnel.sources`` from config merges over the default sources instead of
        replacing the whole table (which would leave only the sources it names)."""
        if isinstance(data, dict):
            funnel = data.get("funnel")
            if isinstance(funnel, dict) and isinstance(funnel.get("sources"), Mapping):
                sources = merged_sources(funnel["sources"])
                data = {**data, "funnel": {**funnel, "sources": sources}}
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _CONFIG_FILE.get() or os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the effective settings: overrides > environment > config file > defaults."""
    path = config_file or os.environ.get(CONFIG_FILE_ENV)
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    token = _CONFIG_FILE.set(str(path) if path else None)
    try:
        return Settings(**overrides)
    finally:
        _CONFIG_FILE.reset(token)
