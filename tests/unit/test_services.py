"""`streamrec services`: the pure parts, and the lifecycle on a throwaway Redis.

Nothing here starts Kafka. Services the tests must not reach are "given" through the
environment and pointed at a port that nobody listens on.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from features.errors import StoreUnavailableError
from features.stores.redis_store import RedisStore
from streamrec.services import (
    KAFKA_ENV,
    REDIS_ENV,
    ServiceError,
    bootstrap_addresses,
    cluster_id,
    failure_reason,
    is_managed,
    kafka_command,
    kafka_server_properties,
    layout,
    new_cluster_id,
    parse_host_port,
    redact_url,
    redis_command,
    replica_command,
    services_down,
    services_status,
    services_up,
    storage_format_command,
)
from streamrec.services.redis import redis_answers
from streamrec.settings import ServicesSettings, Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


def local_settings(
    data_dir: Path,
    kafka_bootstrap: str = "localhost:9092",
    redis_url: str = "redis://localhost:6379/0",
) -> Settings:
    """Settings whose managed services use free ports and keep their files under data_dir."""
    services = ServicesSettings(
        data_dir=data_dir,
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        redis_port=free_port(),
        redis_replica_port=free_port(),
        ready_timeout_s=20,
    )
    return Settings(services=services, kafka_bootstrap=kafka_bootstrap, redis_url=redis_url)


@pytest.fixture
def managed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KAFKA_ENV, raising=False)
    monkeypatch.delenv(REDIS_ENV, raising=False)


@pytest.fixture
def closed_kafka(monkeypatch: pytest.MonkeyPatch) -> str:
    """Kafka given by the user, at a port nobody answers on."""
    bootstrap = f"localhost:{free_port()}"
    monkeypatch.setenv(KAFKA_ENV, bootstrap)
    return bootstrap


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("environ", "managed"),
    [
        ({}, True),
        ({KAFKA_ENV: "broker:9092"}, False),
        ({KAFKA_ENV: "  "}, True),
        ({REDIS_ENV: "redis://elsewhere:6379/0"}, True),
    ],
)
def test_kafka_is_ours_only_when_no_bootstrap_is_given(
    environ: dict[str, str], managed: bool
) -> None:
    assert is_managed(KAFKA_ENV, environ) is managed


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("localhost:9092", ("localhost", 9092)),
        (" broker-1.internal:19092 ", ("broker-1.internal", 19092)),
        ("[::1]:9092", ("::1", 9092)),
        ("PLAINTEXT://localhost:9093", ("localhost", 9093)),
    ],
)
def test_parse_host_port(address: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(address) == expected


@pytest.mark.parametrize("address", ["localhost", ":9092", "localhost:", "host:http", "h:70000"])
def test_parse_host_port_rejects_what_is_not_host_and_port(address: str) -> None:
    with pytest.raises(ValueError, match="host:port|out of range"):
        parse_host_port(address)


def test_bootstrap_addresses_splits_the_list() -> None:
    assert bootstrap_addresses("a:1, b:2,") == [("a", 1), ("b", 2)]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://app:s3cret@cache/2", "rediss://app:***@cache/2"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ],
)
def test_redact_url_hides_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_cluster_id_is_kafkas_base64_form_of_the_uuid() -> None:
    assert cluster_id(bytes(range(16))) == "AAECAwQFBgcICQoLDA0ODw"
    with pytest.raises(ValueError, match="16 bytes"):
        cluster_id(b"short")


def test_new_cluster_ids_are_22_url_safe_chars_that_cli_parsers_accept() -> None:
    ids = {new_cluster_id() for _ in range(300)}
    assert len(ids) == 300
    for cid in ids:
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_server_properties_describe_a_one_node_kraft_cluster(tmp_path: Path) -> None:
    props = parse_properties(
        kafka_server_properties(port=29092, controller_port=29093, log_dir=tmp_path / "data")
    )
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://localhost:29092,CONTROLLER://localhost:29093"
    assert props["advertised.listeners"] == "PLAINTEXT://localhost:29092"
    # `format --standalone` insists on the bootstrap servers form, not on static voters.
    assert props["controller.quorum.bootstrap.servers"] == "localhost:29093"
    assert "controller.quorum.voters" not in props
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    replication = [value for key, value in props.items() if "replication.factor" in key]
    assert replication and set(replication) == {"1"}


def test_layout_resolves_a_relative_data_dir_against_the_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    paths = layout(ServicesSettings(data_dir=Path(".streamrec"), kafka_version="9.8.7"))
    assert paths.root == tmp_path.resolve() / ".streamrec"
    assert paths.kafka_libs == paths.root / "kafka" / "libs-9.8.7"
    assert paths.kafka_data.parent == paths.kafka_pid.parent == paths.root / "kafka"
    assert paths.redis_pid.parent == paths.redis_log.parent == paths.root / "redis"


def test_commands(tmp_path: Path) -> None:
    paths = layout(ServicesSettings(data_dir=tmp_path))
    broker = kafka_command("/usr/bin/java", paths)
    assert "-Xmx768m" in broker and "-XX:+UseG1GC" in broker
    assert broker[broker.index("-cp") + 1] == f"{paths.kafka_libs}/*"
    assert broker[-2:] == ["kafka.Kafka", str(paths.kafka_config)]

    fmt = storage_format_command("/usr/bin/java", paths, "AAECAwQFBgcICQoLDA0ODw")
    assert fmt[fmt.index("kafka.tools.StorageTool") :] == [
        "kafka.tools.StorageTool", "format", "--config", str(paths.kafka_config),
        "--cluster-id", "AAECAwQFBgcICQoLDA0ODw", "--standalone",
    ]  # fmt: skip

    server = redis_command("redis-server", 16379, paths)
    assert server[server.index("--port") + 1] == "16379"
    assert server[server.index("--bind") + 1] == "127.0.0.1"
    assert server[server.index("--save") + 1] == ""  # no RDB snapshots; the AOF is enough
    assert server[server.index("--dir") + 1] == str(paths.redis_dir)

    copy = replica_command("redis-server", 16380, 16379, paths)
    assert copy[copy.index("--replicaof") + 1 : copy.index("--replicaof") + 3] == [
        "127.0.0.1",
        "16379",
    ]
    assert copy[copy.index("--appendonly") + 1] == "no"  # it copies the primary at each start
    assert copy[copy.index("--dir") + 1] == str(paths.replica_dir) != str(paths.redis_dir)


def test_failure_reason_picks_the_root_cause(tmp_path: Path) -> None:
    log = tmp_path / "kafka.log"
    log.write_text(
        "[t] INFO starting (kafka.Kafka$)\n"
        "[t] ERROR Unable to start acceptor for CONTROLLER (kafka.network.DataPlaneAcceptor)\n"
        "org.apache.kafka.common.KafkaException: Socket server failed to bind to localhost:9093\n"
        "\tat kafka.network.Acceptor.openServerSocket(SocketServer.scala:724)\n"
        "Caused by: java.net.BindException: Address already in use\n"
        "[t] ERROR Encountered fatal fault: caught exception (ProcessTerminatingFaultHandler)\n"
        "[t] INFO shutting down\n\n"
    )
    assert failure_reason(log) == (
        "org.apache.kafka.common.KafkaException: Socket server failed to bind to localhost:9093"
    )
    log.write_text("[t] INFO ok\n[t] ERROR Exiting Kafka (kafka.Kafka$)\n[t] INFO bye\n")
    assert failure_reason(log) == "[t] ERROR Exiting Kafka (kafka.Kafka$)"
    log.write_text("1:M * Server started\n1:M # Failed listening on port 6379 (tcp), aborting.\n")
    assert failure_reason(log) == "1:M # Failed listening on port 6379 (tcp), aborting."
    assert failure_reason(tmp_path / "missing.log") == ""


# ---------------------------------------------------------------- behaviour, nothing started


def test_given_services_are_only_checked(
    tmp_path: Path, closed_kafka: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_url = f"redis://:hunter2@localhost:{free_port()}/0"
    monkeypatch.setenv(REDIS_ENV, redis_url)
    settings = local_settings(tmp_path / "sr", kafka_bootstrap=closed_kafka, redis_url=redis_url)

    for report in (services_status(settings), services_up(settings), services_down(settings)):
        kafka, cache = report
        assert (kafka.name, kafka.managed, kafka.running) == ("kafka", False, False)
        assert (cache.name, cache.managed, cache.running) == ("redis", False, False)
        assert kafka.endpoint == closed_kafka
        assert "hunter2" not in cache.endpoint
        assert REDIS_ENV in cache.detail
    assert not (tmp_path / "sr" / "kafka").exists()
    assert not (tmp_path / "sr" / "redis").exists()


@pytest.mark.usefixtures("managed_env")
def test_down_when_nothing_runs_is_fine_and_creates_nothing(tmp_path: Path) -> None:
    settings = local_settings(tmp_path / "sr")
    for report in (services_down(settings), services_status(settings)):
        assert [(s.name, s.managed, s.running, s.detail) for s in report] == [
            ("kafka", True, False, "not running"),
            ("redis", True, False, "not running"),
            ("redis-replica", True, False, "not running"),
        ]
    assert not (tmp_path / "sr").exists()


@pytest.mark.usefixtures("managed_env")
def test_down_never_signals_a_process_that_merely_reuses_a_recorded_pid(tmp_path: Path) -> None:
    settings = local_settings(tmp_path / "sr")
    paths = layout(settings.services)
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        for pidfile in (paths.kafka_pid, paths.redis_pid):
            pidfile.parent.mkdir(parents=True, exist_ok=True)
            pidfile.write_text(f"{bystander.pid}\n")
        assert [s.detail for s in services_down(settings)] == ["not running"] * 3
        assert bystander.poll() is None
        assert not paths.kafka_pid.exists() and not paths.redis_pid.exists()
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.usefixtures("closed_kafka")
def test_up_without_redis_server_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REDIS_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ServiceError, match="apt-get install redis-server"):
        services_up(local_settings(tmp_path / "sr"))


# ---------------------------------------------------------------- lifecycle on a real Redis


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
@pytest.mark.usefixtures("closed_kafka")
def test_redis_up_is_idempotent_and_down_keeps_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REDIS_ENV, raising=False)
    settings = local_settings(tmp_path / "sr")
    paths = layout(settings.services)
    url = f"redis://localhost:{settings.services.redis_port}/0"
    try:
        first = services_up(settings)[1]
        assert first.running and first.endpoint == url and first.detail.startswith("started")
        pid = paths.redis_pid.read_text().strip()
        redis.Redis.from_url(url).set("probe", "kept")

        second = services_up(settings)[1]
        assert second.detail == f"already running (pid {pid})"
        assert services_status(settings)[1].detail == f"running (pid {pid})"

        stopped = services_down(settings)[1]
        assert (stopped.running, stopped.detail) == (False, f"stopped (pid {pid})")
        assert not paths.redis_pid.exists()

        services_up(settings)
        assert redis.Redis.from_url(url).get("probe") == b"kept"  # the AOF survived
    finally:
        services_down(settings)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
@pytest.mark.usefixtures("closed_kafka")
def test_someone_elses_redis_on_our_port_is_used_and_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REDIS_ENV, raising=False)
    settings = local_settings(tmp_path / "sr")
    port = settings.services.redis_port
    theirs = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        for _ in range(50):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        up = services_up(settings)[1]
        assert (up.running, up.detail) == (True, "already running (not started by streamrec)")
        down = services_down(settings)[1]
        assert (down.running, down.detail) == (
            True,
            "running (not started by streamrec); left alone",
        )
        assert theirs.poll() is None
        assert not layout(settings.services).redis_pid.exists()
    finally:
        theirs.terminate()
        theirs.wait()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
@pytest.mark.usefixtures("closed_kafka")
def test_the_replica_copies_the_primary_refuses_writes_and_stops_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REDIS_ENV, raising=False)
    settings = local_settings(tmp_path / "sr")
    primary = redis.Redis(port=settings.services.redis_port)
    replica = redis.Redis(port=settings.services.redis_replica_port or 0)
    try:
        rows = services_up(settings)
        assert [(r.name, r.running) for r in rows[1:]] == [("redis", True), ("redis-replica", True)]
        primary.set("probe", "copied")
        assert primary.wait(1, 5_000) == 1  # the replica acknowledged the write
        assert replica.get("probe") == b"copied"
        with pytest.raises(redis.ReadOnlyError):
            replica.set("probe", "written on the replica")
        down = services_down(settings)
        assert [(r.name, r.running) for r in down[1:]] == [
            ("redis", False),
            ("redis-replica", False),
        ]
    finally:
        services_down(settings)


def free_consecutive_ports(count: int) -> int:
    """A first port of ``count`` consecutive free ports whose cluster-bus ports (+10,000) are
    free too."""
    for first in range(17_100, 19_000, count):
        ports = [p for port in range(first, first + count) for p in (port, port + 10_000)]
        try:
            with contextlib.ExitStack() as stack:
                for port in ports:
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise RuntimeError("no free ports for a cluster")


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli")
def test_services_up_starts_a_three_master_redis_cluster_that_down_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REDIS_ENV, raising=False)
    monkeypatch.setenv(KAFKA_ENV, "localhost:9092")  # given: only Redis is started
    settings = local_settings(tmp_path / "sr")
    settings.services.redis_replica_port = None
    settings.services.redis_cluster_nodes = 3
    settings.services.redis_cluster_port = first = free_consecutive_ports(3)
    try:
        rows = services_up(settings)
        names = [r.name for r in rows if r.running and r.name != "kafka"]
        assert names == ["redis", *(f"redis-cluster-{first + i}" for i in range(3))]
        cluster = RedisCluster(host="127.0.0.1", port=first)
        try:
            # Keys of many slots land on all three masters, and read back through any node.
            for n in range(60):
                cluster.set(f"key-{n}", str(n))
            owners = {cluster.get_node_from_key(f"key-{n}").port for n in range(60)}
            assert owners == {first, first + 1, first + 2}
            assert [cluster.get(f"key-{n}") for n in range(60)] == [
                str(n).encode() for n in range(60)
            ]
        finally:
            cluster.close()
        # A second `up` finds the cluster formed and keeps its data.
        services_up(settings)
        again = RedisCluster(host="127.0.0.1", port=first + 2)
        try:
            assert again.get("key-7") == b"7"
        finally:
            again.close()
        # `down` stops the nodes whatever the settings say now.
        settings.services.redis_cluster_nodes = 0
        down = {r.name: r.running for r in services_down(settings)}
        assert {name: down[name] for name in names[1:]} == dict.fromkeys(names[1:], False)
    finally:
        settings.services.redis_cluster_nodes = 3
        services_down(settings)


def test_an_unreachable_cluster_is_an_unavailable_store_and_does_not_answer() -> None:
    url = f"redis+cluster://localhost:{free_port()}"
    with pytest.raises(StoreUnavailableError, match="cluster unreachable"):
        RedisStore(url, socket_timeout_s=0.5)
    assert redis_answers(url, 0.5) is False
