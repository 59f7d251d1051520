"""Kafka: the broker's jars, server.properties, storage format, start, and readiness probe."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streamrec.services.common import Layout, ServiceError, bootstrap_addresses, log
from streamrec.services.process import rotate_log, spawn
from streamrec.settings import ServicesSettings

# Sized for a shared 2-core CI box: a dev broker with a handful of topics fits in 768 MB.
KAFKA_JVM_OPTS = (
    "-Xms256m",
    "-Xmx768m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
_MAVEN_TIMEOUT_S = 900.0
_FORMAT_TIMEOUT_S = 120.0


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


# ---------------------------------------------------------------- probe


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def kafka_answers(bootstrap: str, config: Mapping[str, str], timeout: float) -> bool:
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


# ---------------------------------------------------------------- start


def _find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise ServiceError("java not found: Kafka needs Java 17+ (apt-get install openjdk-17-jre)")
    return java


def has_kafka_jars(paths: Layout) -> bool:
    """True when the jar cache holds the broker and Apache's command-line tools (a cache from
    before the tools were fetched is fetched again, once)."""
    libs = paths.kafka_libs
    return (
        libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")) and any(libs.glob("kafka-tools-*.jar"))
    )


def fetch_kafka_jars(paths: Layout) -> None:
    """Download the broker's jars with Maven, unless a complete copy is already there."""
    if has_kafka_jars(paths):
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


def start_kafka(services: ServicesSettings, paths: Layout) -> int:
    java = _find_java()
    fetch_kafka_jars(paths)
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
    rotate_log(paths.kafka_log)
    log.info("starting Kafka %s on localhost:%d", paths.kafka_version, services.kafka_port)
    return spawn(kafka_command(java, paths), paths.kafka_log)
