"""Local Kafka and Redis for development and tests: ``streamrec services up|down|status``.

A service is *managed* (started and stopped here) only when the user gave no endpoint of
their own through ``STREAMREC_KAFKA_BOOTSTRAP`` or ``STREAMREC_REDIS_URL``. Given services
are only checked, never touched. Every file we write lives under ``services.data_dir``::

    kafka/libs-<version>/     broker jars, fetched once with Maven
    kafka/data/               the broker's log dirs, kept across restarts
    kafka/server.properties   kafka/log4j2.properties   kafka/kafka.log   kafka/kafka.pid
    redis/                    append-only file, redis.log, redis.pid
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streamrec.settings import ServicesSettings, Settings

log = logging.getLogger(__name__)

#: Environment variables whose presence means "the user runs this service, not us".
KAFKA_ENV = "STREAMREC_KAFKA_BOOTSTRAP"
REDIS_ENV = "STREAMREC_REDIS_URL"

# Sized for a shared 2-core CI box: a dev broker with a handful of topics fits in 768 MB.
KAFKA_JVM_OPTS = (
    "-Xms256m",
    "-Xmx768m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
_PROBE_TIMEOUT_S = 5.0
_POLL_S = 0.2
_STOP_TIMEOUT_S = 20.0
_MAVEN_TIMEOUT_S = 900.0
_FORMAT_TIMEOUT_S = 120.0


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
    lock: Path


# ---------------------------------------------------------------- pure helpers


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


def cluster_id(raw: bytes) -> str:
    """Kafka's text form of a UUID: URL-safe base64 of its 16 bytes, without padding."""
    if len(raw) != 16:
        raise ValueError(f"a UUID has 16 bytes, got {len(raw)}")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def new_cluster_id() -> str:
    """A random cluster id, as ``kafka-storage random-uuid`` would print one."""
    while True:
        candidate = cluster_id(uuid.uuid4().bytes)
        # Kafka's own generator skips these: a CLI would read a leading "-" as an option.
        if not candidate.startswith("-"):
            return candidate


def _property(value: str) -> str:
    # Java .properties treats a backslash as an escape character.
    return value.replace("\\", "\\\\")


def kafka_server_properties(*, port: int, controller_port: int, log_dir: Path) -> str:
    """The server.properties of a single-node KRaft cluster: one broker that is its controller."""
    entries = {
        "process.roles": "broker,controller",
        "node.id": "1",
        # A dynamic (KIP-853) quorum of one, formatted with `--standalone`; Kafka 4's default.
        "controller.quorum.bootstrap.servers": f"localhost:{controller_port}",
        "listeners": f"PLAINTEXT://localhost:{port},CONTROLLER://localhost:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://localhost:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": _property(str(log_dir)),
        # One broker: every internal topic has to settle for one replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Consumers join at once instead of waiting 3 s for group members that never come.
        "group.initial.rebalance.delay.ms": "0",
        "num.partitions": "1",
        # streamrec creates its topics itself, with the partition counts it wants.
        "auto.create.topics.enable": "false",
    }
    lines = ["# Written by `streamrec services up` at every start; edits are lost."]
    lines += [f"{key}={value}" for key, value in entries.items()]
    return "\n".join(lines) + "\n"


def _java_command(java: str, paths: Layout, jvm_opts: tuple[str, ...], *main: str) -> list[str]:
    return [
        java,
        *jvm_opts,
        f"-Dlog4j2.configurationFile={paths.kafka_log4j}",
        # A JVM crash report would otherwise land in whatever directory we were run from.
        f"-XX:ErrorFile={paths.kafka_dir}/hs_err_pid%p.log",
        "-cp",
        f"{paths.kafka_libs}/*",
        *main,
    ]


def kafka_command(java: str, paths: Layout) -> list[str]:
    """The command line of the broker."""
    return _java_command(java, paths, KAFKA_JVM_OPTS, "kafka.Kafka", str(paths.kafka_config))


def storage_format_command(java: str, paths: Layout, cluster: str) -> list[str]:
    """The command that formats the broker's log dirs as a standalone (one-voter) quorum."""
    return _java_command(
        java, paths, (), "kafka.tools.StorageTool", "format",
        "--config", str(paths.kafka_config), "--cluster-id", cluster, "--standalone",
    )  # fmt: skip


def redis_command(redis_server: str, port: int, paths: Layout) -> list[str]:
    """The command line of the Redis server: loopback only, append-only, no RDB snapshots."""
    return [
        redis_server,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(paths.redis_dir),
        "--appendonly", "yes",
        "--save", "",
        "--daemonize", "no",
        "--pidfile", str(paths.redis_pid),
        "--logfile", str(paths.redis_log),
    ]  # fmt: skip


def failure_reason(log_file: Path, limit: int = 300) -> str:
    """The line of a failed start's log that best says why, or "" without a log.

    The first Java exception message names the root cause (the ERROR lines and the
    `Caused by` lines after it mostly repeat it); Redis logs its reason last.
    """
    try:
        with log_file.open("rb") as handle:
            text = handle.read(1 << 20).decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    exceptions = [line for line in lines if "Exception: " in line or "Error: " in line]
    errors = [line for line in lines if " ERROR " in line or " FATAL " in line]
    if exceptions or errors:
        return (exceptions or errors)[0][:limit]
    return lines[-1][:limit] if lines else ""


# ---------------------------------------------------------------- processes


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_pid(pidfile: Path, pid: int) -> None:
    tmp = pidfile.with_suffix(".pid.tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(pidfile)


def _running(pid: int, marker: str) -> bool:
    """Whether pid is alive and still the process we started (see _proc_matches)."""
    # A service we started in this very process turns into a zombie when it exits, and a
    # zombie still answers kill(0): reap it first.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if not Path("/proc").is_dir():
        return True  # no procfs (macOS): trust the pid
    # The pid may have been reused by an unrelated process since the pidfile was written.
    return _proc_matches(pid, marker)


def _proc_matches(pid: int, marker: str) -> bool:
    """Whether /proc shows pid alive, with marker in its command line or as its task name."""
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        name = (proc / "comm").read_text().strip()
        cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
    except (OSError, IndexError):
        return False
    # Redis blanks its command line for a moment while it retitles itself; its task name stays.
    # A zombie ("Z") has exited, and only waits for its parent to reap it.
    return state != "Z" and (marker in cmdline or marker == name)


def _spawn(argv: list[str], log_file: Path) -> int:
    """Start argv in a new session, output appended to log_file, and return its pid."""
    # posix_spawn rather than Popen: the service must outlive us, and a Popen object that
    # is collected while its child still runs warns about it (ResourceWarning).
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        return os.posix_spawnp(
            argv[0],
            argv,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(fd)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Each service leads its own session, so its group also holds any helper it forked.
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _stop(name: str, pid: int, marker: str) -> None:
    """SIGTERM the service's group, and SIGKILL it if it is still there after a grace period."""
    log.info("stopping %s (pid %d)", name, pid)
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while _running(pid, marker):
        if time.monotonic() >= deadline:
            log.warning(
                "%s (pid %d) ignored SIGTERM for %.0f s; killing it", name, pid, _STOP_TIMEOUT_S
            )
            _signal_group(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while _running(pid, marker) and time.monotonic() < deadline:
                time.sleep(0.1)
            return
        time.sleep(0.2)


def _rotate(log_file: Path) -> None:
    # Keep the previous run's log: when a restart is needed, it usually explains why.
    if log_file.exists():
        log_file.replace(log_file.with_name(log_file.name + ".1"))


@contextlib.contextmanager
def _locked(paths: Layout) -> Iterator[None]:
    """Serialise `services` commands on one data dir, so two `up`s never start two brokers."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with paths.lock.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another `streamrec services` command on %s", paths.root)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------- probes


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _kafka_answers(bootstrap: str, config: Mapping[str, str], timeout: float) -> bool:
    """Whether a Kafka cluster answers a metadata request."""
    # A plain TCP check first: a closed port is then a fast "no", without librdkafka's retries.
    with contextlib.suppress(ValueError):  # an odd bootstrap string is librdkafka's to judge
        if not any(_port_open(host, port) for host, port in bootstrap_addresses(bootstrap)):
            return False
    # log_level 0: the broker refusing connections while it boots is expected, not news.
    try:
        admin = AdminClient({**config, "bootstrap.servers": bootstrap, "log_level": 0})
        admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


def _redis_answers(url: str, timeout: float) -> bool:
    """Whether a Redis server answers PING."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


# ---------------------------------------------------------------- Kafka


def _find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise ServiceError("java not found: Kafka needs Java 17+ (apt-get install openjdk-17-jre)")
    return java


def _fetch_kafka_jars(paths: Layout) -> None:
    """Download the broker's jars with Maven, unless a complete copy is already there."""
    if paths.kafka_libs.is_dir() and any(paths.kafka_libs.glob("*.jar")):
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("mvn not found: Maven fetches the Kafka jars (apt-get install maven)")
    log.info("fetching Kafka %s jars with Maven (first run only)", paths.kafka_version)
    paths.kafka_dir.mkdir(parents=True, exist_ok=True)
    pom_text = resources.files("streamrec.resources").joinpath("kafka-pom.xml").read_text()
    # Download into a scratch dir and rename it into place once complete, so that an
    # interrupted download is never mistaken for a cache.
    with tempfile.TemporaryDirectory(dir=paths.kafka_dir, prefix=".fetch-") as scratch:
        (Path(scratch) / "pom.xml").write_text(pom_text)
        out = Path(scratch) / "libs"
        argv = [
            mvn,
            "-B",
            "-q",
            "-Dstyle.color=never",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={out}",
            f"-Dkafka.version={paths.kafka_version}",
        ]
        try:
            done = subprocess.run(
                argv,
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=_MAVEN_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"Maven took over {_MAVEN_TIMEOUT_S:.0f} s to fetch Kafka") from exc
        if done.returncode != 0 or not any(out.glob("*.jar")):
            paths.maven_log.write_text(done.stdout + done.stderr)
            raise ServiceError(
                f"Maven could not fetch Kafka {paths.kafka_version} jars "
                f"(exit {done.returncode}); see {paths.maven_log}"
            )
        if paths.kafka_libs.exists():
            shutil.rmtree(paths.kafka_libs)  # an empty leftover
        out.rename(paths.kafka_libs)
    log.info("Kafka jars are in %s", paths.kafka_libs)


def _format_kafka_storage(java: str, paths: Layout) -> None:
    """Format the log dirs once; meta.properties is what Kafka writes when it is done."""
    if (paths.kafka_data / "meta.properties").exists():
        return
    cluster = new_cluster_id()
    log.info("formatting Kafka storage in %s (cluster id %s)", paths.kafka_data, cluster)
    argv = storage_format_command(java, paths, cluster)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=_FORMAT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"formatting Kafka storage took over {_FORMAT_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        paths.kafka_log.write_text(done.stdout + done.stderr)
        raise ServiceError(
            f"formatting Kafka storage failed (exit {done.returncode}); see {paths.kafka_log}"
        )


def _start_kafka(services: ServicesSettings, paths: Layout) -> int:
    java = _find_java()
    _fetch_kafka_jars(paths)
    paths.kafka_data.mkdir(parents=True, exist_ok=True)
    # Rewritten at every start, so that changed ports take effect.
    paths.kafka_config.write_text(
        kafka_server_properties(
            port=services.kafka_port,
            controller_port=services.kafka_controller_port,
            log_dir=paths.kafka_data,
        )
    )
    log4j = resources.files("streamrec.resources").joinpath("kafka-log4j2.properties")
    paths.kafka_log4j.write_text(log4j.read_text())
    _format_kafka_storage(java, paths)
    _rotate(paths.kafka_log)
    log.info("starting Kafka %s on localhost:%d", paths.kafka_version, services.kafka_port)
    return _spawn(kafka_command(java, paths), paths.kafka_log)


# ---------------------------------------------------------------- Redis


def _start_redis(services: ServicesSettings, paths: Layout) -> int:
    server = shutil.which("redis-server")
    if server is None:
        raise ServiceError(
            "redis-server not found on PATH; install it with `apt-get install redis-server`"
        )
    paths.redis_dir.mkdir(parents=True, exist_ok=True)
    _rotate(paths.redis_log)
    log.info("starting Redis on localhost:%d", services.redis_port)
    return _spawn(redis_command(server, services.redis_port, paths), paths.redis_log)


# ---------------------------------------------------------------- services


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
        pid = _read_pid(self.pidfile)
        return pid if pid is not None and _running(pid, self.marker) else None


def _services(settings: Settings, environ: Mapping[str, str]) -> list[_Service]:
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
    return [
        _Service(
            name="kafka",
            env_var=KAFKA_ENV,
            managed=kafka_managed,
            endpoint=bootstrap,
            probe=lambda timeout: _kafka_answers(bootstrap, kafka_config, timeout),
            pidfile=paths.kafka_pid,
            log_file=paths.kafka_log,
            marker=str(paths.kafka_config),
            start=lambda: _start_kafka(services, paths),
        ),
        _Service(
            name="redis",
            env_var=REDIS_ENV,
            managed=redis_managed,
            endpoint=redis_url,
            probe=lambda timeout: _redis_answers(redis_url, timeout),
            pidfile=paths.redis_pid,
            log_file=paths.redis_log,
            marker="redis-server",  # its task name (comm)
            start=lambda: _start_redis(services, paths),
        ),
    ]


def _wait_ready(service: _Service, pid: int, deadline: float, timeout_s: float) -> None:
    """Poll until the service answers; fail fast if it exits, or at the deadline."""
    while not service.probe(_PROBE_TIMEOUT_S):
        if not _running(pid, service.marker):
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
    with _locked(layout(settings.services)):
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
                _write_pid(service.pidfile, pid)
                pending.append((service, pid, f"started (pid {pid})"))
        # The clock starts after the starts, so a first-run jar download does not count.
        timeout_s = settings.services.ready_timeout_s
        deadline = time.monotonic() + timeout_s
        for service, pid, detail in pending:
            _wait_ready(service, pid, deadline, timeout_s)
            results[service.name] = service.status(True, detail)
    return [results[service.name] for service in services]


def services_down(settings: Settings) -> list[ServiceStatus]:
    """Stop the managed services we started; keep their data so the next `up` is quick."""
    services = _services(settings, os.environ)
    paths = layout(settings.services)
    results: list[ServiceStatus] = []
    # Without a data dir we never started anything, and nothing needs the lock.
    guard = _locked(paths) if paths.root.is_dir() else contextlib.nullcontext()
    with guard:
        for service in services:
            if not service.managed:
                running = service.probe(_PROBE_TIMEOUT_S)
                detail = f"given by {service.env_var}; left alone"
            elif (pid := service.our_pid()) is not None:
                _stop(service.name, pid, service.marker)
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
    for service in _services(settings, os.environ):
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
