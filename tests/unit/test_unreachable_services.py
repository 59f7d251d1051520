"""Starting with Kafka and Redis unreachable: retry, one clear log line, /health says why."""

from __future__ import annotations

import time

import httpx

from tests.helpers import ARTIFACTS, free_port, start, stop, wait_for

NOWHERE = {
    "STREAMREC_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    "STREAMREC_REDIS_URL": "redis://127.0.0.1:1/0",
}


def test_the_server_starts_reports_the_problem_and_never_500s() -> None:
    port = free_port()
    proc = start(["serve", "--port", str(port)], NOWHERE, "serve-unreachable")
    base = f"http://127.0.0.1:{port}"
    try:
        health = wait_for("the API to answer", lambda: httpx.get(f"{base}/health", timeout=5))
        assert health.status_code == 503
        body = health.json()
        assert body["store"]["ok"] is False
        assert wait_for(
            "the broker probe to report kafka down",
            lambda: not httpx.get(f"{base}/health", timeout=5).json()["transport"]["ok"],
        )
        feed = httpx.get(f"{base}/feed/u1", timeout=10)
        assert feed.status_code == 200
        assert feed.json()["degraded"] is True
    finally:
        stop(proc)
    log = (ARTIFACTS / "serve-unreachable.log").read_text()
    assert "Traceback" not in log
    assert log.count("store unreachable") == 1
    # One line per Kafka client (the event producer, the index replica's reader), not per retry.
    kafka_lines = [
        line.split(": kafka unreachable")[0]
        for line in log.splitlines()
        if "kafka unreachable" in line
    ]
    assert kafka_lines and len(kafka_lines) == len(set(kafka_lines)), log
    assert len(log.splitlines()) <= 6, log


def test_the_worker_waits_for_redis_with_one_log_line() -> None:
    proc = start(["worker"], NOWHERE, "worker-unreachable")
    try:
        time.sleep(4)  # long enough for several backoff rounds
        assert proc.poll() is None, "the worker must keep retrying, not exit"
    finally:
        stop(proc)
    assert proc.returncode == 0, "SIGTERM during the wait is a clean stop"
    log = (ARTIFACTS / "worker-unreachable.log").read_text()
    assert "Traceback" not in log
    assert log.count("store unreachable; retrying with backoff") == 1
    assert len(log.splitlines()) <= 8, log
