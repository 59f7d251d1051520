"""docker-compose.yml describes the same stack as `streamrec services up`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from streamrec.settings import Settings

ROOT = Path(__file__).parents[2]


def _is_setting(variable: str) -> bool:
    """Whether STREAMREC_A__B names the field a.b of the settings tree."""
    model: type[BaseModel] = Settings
    parts = variable.removeprefix("STREAMREC_").lower().split("__")
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if depth < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def _compose_command() -> list[str] | None:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_has_the_stack_and_points_streamrec_at_it() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "worker", "api"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    for name in ("worker", "api", "topics"):
        env = services[name]["environment"]
        assert env["STREAMREC_KAFKA_BOOTSTRAP"].startswith("kafka:")
        assert env["STREAMREC_REDIS_URL"].startswith("redis://redis:")
        for variable in env:
            assert _is_setting(variable), f"{name} sets {variable}, which no setting reads"
    assert services["api"]["command"][:2] == ["streamrec", "serve"]
    assert services["worker"]["command"] == ["streamrec", "worker"]
    # The API reads a real replica of the primary; the worker writes the primary only.
    replica = services["redis-replica"]["command"]
    assert replica[replica.index("--replicaof") + 1] == "redis"
    assert services["api"]["environment"]["STREAMREC_REDIS_REPLICA_URL"].startswith(
        "redis://redis-replica:"
    )
    assert "STREAMREC_REDIS_REPLICA_URL" not in services["worker"]["environment"]


def test_the_cluster_profile_has_three_cluster_masters_and_their_create_step() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    nodes = [name for name in services if name.startswith("redis-cluster-") and name[-1].isdigit()]
    assert len(nodes) == 3
    for name in [*nodes, "redis-cluster-create"]:
        assert services[name]["profiles"] == ["cluster"]  # not started by a plain `up`
    for name in nodes:
        command = services[name]["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
    create = " ".join(services["redis-cluster-create"]["command"])
    assert "--cluster create" in create and "--cluster-replicas 0" in create
    assert set(services["redis-cluster-create"]["depends_on"]) == set(nodes)
    workers = services["worker-cluster"]
    assert workers["profiles"] == ["cluster"] and workers["deploy"]["replicas"] == 2
    assert workers["environment"]["STREAMREC_REDIS_URL"] == "redis+cluster://redis-cluster-1:7000"
    assert int(workers["environment"]["STREAMREC_REDIS_SHARDS"]) > 1
    Settings.model_validate({"redis_url": workers["environment"]["STREAMREC_REDIS_URL"]})


@pytest.mark.skipif(_compose_command() is None, reason="no docker compose client installed")
def test_docker_compose_config_accepts_the_file() -> None:
    command = _compose_command() or []
    result = subprocess.run(
        [*command, "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
