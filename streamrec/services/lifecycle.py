"""`up`, `down` and `status` over both services, whoever runs them."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from streamrec.services.common import (
    KAFKA_ENV,
    REDIS_ENV,
    ServiceError,
    ServiceStatus,
    is_managed,
    layout,
    log,
    redact_url,
)
from streamrec.services.kafka import kafka_answers, start_kafka
from streamrec.services.process import (
    failure_reason,
    held_lock,
    is_running,
    read_pid,
    stop_process,
    write_pid,
)
from streamrec.services.redis import (
    redis_answers,
    replica_in_sync,
    start_redis,
    start_redis_replica,
)
from streamrec.services.redis_cluster import (
    ClusterNode,
    cluster_nodes,
    ensure_cluster,
    existing_nodes,
    start_cluster_node,
)
from streamrec.settings import Settings

_PROBE_TIMEOUT_S = 5.0
_POLL_S = 0.2


@dataclass(frozen=True)
class _Service:
    """One service, whoever runs it, with what `up`, `down` and `status` need of it."""

    name: str
    env_var: str
    managed: bool
    endpoint: str
    probe: Callable[[float], bool]
    pidfile: Path
    log_file: Path
    marker: str  # in the command line, or the task name, of the process we start
    start: Callable[[], int]

    def status(self, running: bool, detail: str) -> ServiceStatus:
        return ServiceStatus(self.name, self.managed, running, redact_url(self.endpoint), detail)

    def our_pid(self) -> int | None:
        pid = read_pid(self.pidfile)
        return pid if pid is not None and is_running(pid, self.marker) else None


def _services(
    settings: Settings, environ: Mapping[str, str], *, every: bool = False
) -> list[_Service]:
    services = settings.services
    paths = layout(services)
    kafka_managed = is_managed(KAFKA_ENV, environ)
    redis_managed = is_managed(REDIS_ENV, environ)
    bootstrap = f"localhost:{services.kafka_port}" if kafka_managed else settings.kafka_bootstrap
    # The given cluster may need SASL/TLS settings; ours is plain localhost.
    kafka_config = {} if kafka_managed else dict(settings.kafka_config)
    redis_url = (
        f"redis://localhost:{services.redis_port}/0" if redis_managed else settings.redis_url
    )
    found = [
        _Service(
            name="kafka",
            env_var=KAFKA_ENV,
            managed=kafka_managed,
            endpoint=bootstrap,
            probe=lambda timeout: kafka_answers(bootstrap, kafka_config, timeout),
            pidfile=paths.kafka_pid,
            log_file=paths.kafka_log,
            marker=str(paths.kafka_config),
            start=lambda: start_kafka(services, paths),
        ),
        _Service(
            name="redis",
            env_var=REDIS_ENV,
            managed=redis_managed,
            endpoint=redis_url,
            probe=lambda timeout: redis_answers(redis_url, timeout),
            pidfile=paths.redis_pid,
            log_file=paths.redis_log,
            marker="redis-server",  # its task name (comm)
            start=lambda: start_redis(services, paths),
        ),
    ]
    # A replica of someone else's Redis is theirs to run: they give its URL themselves.
    replica_port = services.redis_replica_port
    if redis_managed and replica_port is not None:
        replica_url = f"redis://localhost:{replica_port}/0"
        found.append(
            _Service(
                name="redis-replica",
                env_var=REDIS_ENV,
                managed=True,
                endpoint=replica_url,
                # Ready once it holds a copy: an API started next reads no empty replica.
                probe=lambda timeout: replica_in_sync(replica_url, timeout),
                pidfile=paths.replica_pid,
                log_file=paths.replica_log,
                marker="redis-server",
                start=lambda: start_redis_replica(replica_port, services.redis_port, paths),
            )
        )
    if redis_managed:
        found += [_cluster_service(node) for node in _cluster(settings, paths.root, every=every)]
    return found


def _cluster(settings: Settings, root: Path, *, every: bool) -> list[ClusterNode]:
    """The configured cluster nodes; with ``every``, also those an earlier `up` left (for
    `down` and `status`, whatever the settings say now)."""
    services = settings.services
    nodes = cluster_nodes(root, services.redis_cluster_port, services.redis_cluster_nodes)
    if every:
        known = {n.port for n in nodes}
        nodes += [n for n in existing_nodes(root) if n.port not in known]
    return nodes


def _cluster_service(node: ClusterNode) -> _Service:
    return _Service(
        name=f"redis-cluster-{node.port}",
        env_var=REDIS_ENV,
        managed=True,
        endpoint=node.url,
        probe=lambda timeout: redis_answers(node.url, timeout),
        pidfile=node.pidfile,
        log_file=node.log_file,
        marker="redis-server",
        start=lambda: start_cluster_node(node),
    )


def _wait_ready(service: _Service, pid: int, deadline: float, timeout_s: float) -> None:
    """Poll until the service answers; fail fast if it exits, or at the deadline."""
    while not service.probe(_PROBE_TIMEOUT_S):
        if not is_running(pid, service.marker):
            reason = failure_reason(service.log_file)
            raise ServiceError(
                f"{service.name} exited during startup"
                + (f" ({reason})" if reason else "")
                + f"; see {service.log_file}"
            )
        if time.monotonic() >= deadline:
            raise ServiceError(
                f"{service.name} (pid {pid}) did not answer on {service.endpoint} within "
                f"{timeout_s:.0f} s; see {service.log_file} (`streamrec services down` stops it)"
            )
        time.sleep(_POLL_S)
    log.info("%s is ready on %s", service.name, redact_url(service.endpoint))


def services_up(settings: Settings) -> list[ServiceStatus]:
    """Start whichever managed services are not running, and wait until all of them answer.

    Given services are only checked. Raises ServiceError, naming the log file, when a
    service cannot be started or does not answer within ``ready_timeout_s``.
    """
    services = _services(settings, os.environ)
    results: dict[str, ServiceStatus] = {}
    pending: list[tuple[_Service, int, str]] = []
    with held_lock(layout(settings.services)):
        for service in services:
            if not service.managed:
                running = service.probe(_PROBE_TIMEOUT_S)
                results[service.name] = service.status(running, f"given by {service.env_var}")
            elif (pid := service.our_pid()) is not None:
                pending.append((service, pid, f"already running (pid {pid})"))
            elif service.probe(_PROBE_TIMEOUT_S):
                log.info(
                    "%s already answers on %s; not starting another", service.name, service.endpoint
                )
                results[service.name] = service.status(
                    True, "already running (not started by streamrec)"
                )
            else:
                pid = service.start()
                write_pid(service.pidfile, pid)
                pending.append((service, pid, f"started (pid {pid})"))
        # The clock starts after the starts, so a first-run jar download does not count.
        timeout_s = settings.services.ready_timeout_s
        deadline = time.monotonic() + timeout_s
        for service, pid, detail in pending:
            _wait_ready(service, pid, deadline, timeout_s)
            results[service.name] = service.status(True, detail)
        nodes = _cluster(settings, layout(settings.services).root, every=False)
        if nodes and is_managed(REDIS_ENV, os.environ):
            ensure_cluster(nodes, max(deadline - time.monotonic(), 30.0))
    return [results[service.name] for service in services]


def services_down(settings: Settings) -> list[ServiceStatus]:
    """Stop the managed services we started; keep their data so the next `up` is quick."""
    services = _services(settings, os.environ, every=True)
    paths = layout(settings.services)
    results: list[ServiceStatus] = []
    # Without a data dir we never started anything, and nothing needs the lock.
    guard = held_lock(paths) if paths.root.is_dir() else contextlib.nullcontext()
    with guard:
        for service in services:
            if not service.managed:
                running = service.probe(_PROBE_TIMEOUT_S)
                detail = f"given by {service.env_var}; left alone"
            elif (pid := service.our_pid()) is not None:
                stop_process(service.name, pid, service.marker)
                service.pidfile.unlink(missing_ok=True)
                running = service.probe(1.0)
                detail = f"stopped (pid {pid})"
            else:
                service.pidfile.unlink(missing_ok=True)  # stale, if there was one
                running = service.probe(1.0)
                detail = "not running"
                if running:
                    detail = "running (not started by streamrec); left alone"
            results.append(service.status(running, detail))
    return results


def services_status(settings: Settings) -> list[ServiceStatus]:
    """Whether each service answers now, and who runs it. Starts and stops nothing."""
    results: list[ServiceStatus] = []
    for service in _services(settings, os.environ, every=True):
        running = service.probe(_PROBE_TIMEOUT_S)
        pid = service.our_pid() if service.managed else None
        if not service.managed:
            detail = f"given by {service.env_var}"
        elif pid is not None and running:
            detail = f"running (pid {pid})"
        elif pid is not None:
            detail = f"starting or unresponsive (pid {pid}); see {service.log_file}"
        elif running:
            detail = "running (not started by streamrec)"
        else:
            detail = "not running"
        results.append(service.status(running, detail))
    return results


def ensure_services(settings: Settings) -> None:
    """Make sure Kafka and Redis answer: start the managed ones, fail on given ones that don't."""
    down = [row for row in services_up(settings) if not row.running]
    if down:
        raise ServiceError(
            "; ".join(f"{r.name} at {r.endpoint} is not answering ({r.detail})" for r in down)
        )
