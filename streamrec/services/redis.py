"""Redis: the server's command line, its start, and its readiness probe."""

from __future__ import annotations

import shutil

import redis

from features.errors import StoreUnavailableError
from features.stores.redis_store import RedisStore, is_cluster_url
from streamrec.services.common import Layout, ServiceError, log
from streamrec.services.process import rotate_log, spawn
from streamrec.settings import ServicesSettings


def redis_command(
    redis_server: str, port: int, paths: Layout, *, persistent: bool = True
) -> list[str]:
    """The command line of the Redis server: loopback only, append-only, no RDB snapshots.

    ``persistent=False`` keeps nothing on disk at all (a restart comes back empty): the
    fault-injection tests run such a server to check that workers rebuild from the log.
    """
    return [
        redis_server,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(paths.redis_dir),
        "--appendonly", "yes" if persistent else "no",
        "--save", "",
        "--daemonize", "no",
        "--pidfile", str(paths.redis_pid),
        "--logfile", str(paths.redis_log),
        # A replica that (re)connects gets its copy now, not after the default 5 s wait.
        "--repl-diskless-sync-delay", "0",
    ]  # fmt: skip


def replica_command(redis_server: str, port: int, primary_port: int, paths: Layout) -> list[str]:
    """The command line of the read replica: ``replicaof`` the local server, read-only, and
    nothing on disk (it copies the primary whenever it starts)."""
    return [
        redis_server,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--replicaof", "127.0.0.1", str(primary_port),
        "--replica-read-only", "yes",
        "--dir", str(paths.replica_dir),
        "--appendonly", "no",
        "--save", "",
        "--daemonize", "no",
        "--pidfile", str(paths.replica_pid),
        "--logfile", str(paths.replica_log),
    ]  # fmt: skip


def redis_answers(url: str, timeout: float) -> bool:
    """Whether a Redis server (or a cluster, for a ``redis+cluster://`` URL) answers PING."""
    if is_cluster_url(url):
        try:
            store = RedisStore(url, socket_timeout_s=timeout)
        except StoreUnavailableError:
            return False  # no node of the cluster answers
        try:
            return store.ping()
        finally:
            store.close()
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def replica_in_sync(url: str, timeout: float) -> bool:
    """Whether a Redis replica answers and its link to the primary is up (it holds a copy)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        info = client.info("replication")
        return info.get("role") == "slave" and info.get("master_link_status") == "up"
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def redis_server_path() -> str:
    """The redis-server binary on PATH, or a ServiceError saying how to install it."""
    server = shutil.which("redis-server")
    if server is None:
        raise ServiceError(
            "redis-server not found on PATH; install it with `apt-get install redis-server`"
        )
    return server


def start_redis(services: ServicesSettings, paths: Layout, *, persistent: bool = True) -> int:
    server = redis_server_path()
    paths.redis_dir.mkdir(parents=True, exist_ok=True)
    rotate_log(paths.redis_log)
    log.info("starting Redis on localhost:%d", services.redis_port)
    argv = redis_command(server, services.redis_port, paths, persistent=persistent)
    return spawn(argv, paths.redis_log)


def start_redis_replica(port: int, primary_port: int, paths: Layout) -> int:
    """Start a read replica of the local Redis (on ``primary_port``) on ``port``."""
    server = redis_server_path()
    paths.replica_dir.mkdir(parents=True, exist_ok=True)
    rotate_log(paths.replica_log)
    log.info("starting a Redis replica on localhost:%d (of :%d)", port, primary_port)
    argv = replica_command(server, port, primary_port, paths)
    return spawn(argv, paths.replica_log)
