"""A local Redis Cluster from Debian's ``redis-server``: its nodes' command lines and files,
and the one-time ``redis-cli --cluster create`` that assigns the slots.

Each node is a master in ``<data_dir>/redis-cluster/<port>/``, with its own append-only file
and ``nodes.conf``: a node that restarts comes back with its slots and its data, so the
cluster is created once and only started after that.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from streamrec.services.common import ServiceError, log
from streamrec.services.process import rotate_log, spawn
from streamrec.services.redis import redis_server_path

#: Hash slots of a Redis Cluster; every one must be served for it to be ``ok``.
SLOTS = 16_384


@dataclass(frozen=True)
class ClusterNode:
    """Where one local cluster node listens and keeps its files."""

    port: int
    directory: Path

    @property
    def log_file(self) -> Path:
        return self.directory / "redis.log"

    @property
    def pidfile(self) -> Path:
        return self.directory / "redis.pid"

    @property
    def url(self) -> str:
        return f"redis://localhost:{self.port}/0"


def cluster_root(data_dir: Path) -> Path:
    """The directory holding every node's directory."""
    return data_dir / "redis-cluster"


def cluster_nodes(data_dir: Path, first_port: int, count: int) -> list[ClusterNode]:
    """The ``count`` nodes of the local cluster, on consecutive ports from ``first_port``.

    Examples:
        >>> [(n.port, n.directory.name) for n in cluster_nodes(Path("/d"), 7000, 2)]
        [(7000, '7000'), (7001, '7001')]
    """
    root = cluster_root(data_dir)
    return [ClusterNode(port, root / str(port)) for port in range(first_port, first_port + count)]


def existing_nodes(data_dir: Path) -> list[ClusterNode]:
    """Nodes an earlier `up` created (whatever the settings say now), so `down` stops them."""
    root = cluster_root(data_dir)
    if not root.is_dir():
        return []
    ports = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    return [ClusterNode(port, root / str(port)) for port in ports]


def cluster_node_command(redis_server: str, node: ClusterNode) -> list[str]:
    """The command line of one cluster master: loopback only, append-only, no RDB."""
    return [
        redis_server,
        "--port", str(node.port),
        "--bind", "127.0.0.1",
        "--cluster-enabled", "yes",
        "--cluster-config-file", str(node.directory / "nodes.conf"),
        "--cluster-node-timeout", "5000",
        "--dir", str(node.directory),
        "--appendonly", "yes",
        "--save", "",
        "--daemonize", "no",
        "--pidfile", str(node.pidfile),
        "--logfile", str(node.log_file),
    ]  # fmt: skip


def start_cluster_node(node: ClusterNode) -> int:
    """Start one node; returns its pid."""
    server = redis_server_path()
    node.directory.mkdir(parents=True, exist_ok=True)
    rotate_log(node.log_file)
    log.info("starting Redis Cluster node on localhost:%d", node.port)
    return spawn(cluster_node_command(server, node), node.log_file)


def cluster_state(node: ClusterNode, timeout: float) -> dict[str, str]:
    """``CLUSTER INFO`` of a node as strings; empty when it does not answer."""
    client = redis.Redis(
        port=node.port,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        decode_responses=True,
    )
    try:
        info = client.cluster("INFO")
    except (redis.RedisError, OSError):
        return {}
    finally:
        client.close()
    if isinstance(info, dict):
        return {str(k): str(v) for k, v in info.items()}
    return dict(line.split(":", 1) for line in str(info).splitlines() if ":" in line)


def cluster_ok(nodes: list[ClusterNode], timeout: float) -> bool:
    """Whether every node sees a whole cluster of these nodes with every slot served."""
    for node in nodes:
        state = cluster_state(node, timeout)
        if (
            state.get("cluster_state") != "ok"
            or state.get("cluster_known_nodes") != str(len(nodes))
            or state.get("cluster_slots_assigned") != str(SLOTS)
        ):
            return False
    return True


def ensure_cluster(nodes: list[ClusterNode], timeout_s: float) -> None:
    """Create the cluster over ``nodes`` unless they already form one, then wait until every
    node says ``cluster_state:ok``. Raises ServiceError, with redis-cli's output, otherwise."""
    if not cluster_ok(nodes, 2.0):
        unassigned = all(cluster_state(n, 2.0).get("cluster_slots_assigned") == "0" for n in nodes)
        if unassigned:
            _create(nodes)
    deadline = time.monotonic() + timeout_s
    while not cluster_ok(nodes, 2.0):
        if time.monotonic() >= deadline:
            raise ServiceError(
                f"the Redis Cluster on ports {nodes[0].port}-{nodes[-1].port} is not ok after "
                f"{timeout_s:.0f} s; see {nodes[0].log_file}"
            )
        time.sleep(0.2)
    log.info("Redis Cluster is ok on ports %d-%d", nodes[0].port, nodes[-1].port)


def _create(nodes: list[ClusterNode]) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        raise ServiceError(
            "redis-cli not found on PATH; install it with `apt-get install redis-tools`"
        )
    argv = [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes)]
    argv += ["--cluster-replicas", "0", "--cluster-yes"]
    log.info("creating the Redis Cluster: %s", " ".join(argv[1:]))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    if result.returncode != 0:
        raise ServiceError(
            f"redis-cli --cluster create failed: {result.stdout[-2000:]}{result.stderr}"
        )
