"""The embedded default, as a user runs it: one process, no Kafka, no Redis."""

from __future__ import annotations

import httpx

from tests.helpers import free_port, start, stop, wait_for


def test_demo_serves_a_feed_that_follows_the_stream() -> None:
    port = free_port()
    proc = start(
        ["demo", "--port", str(port), "--rate", "400", "--duration", "60"],
        # Point the Kafka/Redis settings at nothing: the demo must not need them.
        {
            "STREAMREC_KAFKA_BOOTSTRAP": "127.0.0.1:1",
            "STREAMREC_REDIS_URL": "redis://127.0.0.1:1/0",
        },
        "demo",
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def feed() -> list[dict[str, object]] | None:
            body = httpx.get(f"{base}/feed/u1", params={"k": 10}, timeout=5).json()
            assert body["degraded"] is False
            return body["items"] or None

        first = wait_for("a non-empty demo feed", feed)
        # Healthy once the worker reports and the index replica has caught up.
        wait_for(
            "the demo to report healthy",
            lambda: httpx.get(f"{base}/health", timeout=5).json()["status"] == "ok",
        )
        # The stream keeps flowing: the decayed scores move between two reads.
        second = wait_for("the feed to change", lambda: (f := feed()) != first and f)
        assert {i["item_id"] for i in second} and second != first
        assert proc.poll() is None
    finally:
        stop(proc)
