"""Request ids in responses and logs; structured JSON logs with stream coordinates."""

from __future__ import annotations

import io
import json
import logging

from fastapi.testclient import TestClient

from streamrec.logs import JsonFormatter, RequestIdFilter
from streams.io.bus import InProcessBus
from streams.io.dead_letter import DeadLetterPolicy
from streams.io.transport import RawMessage
from streams.settings import TopicSettings
from tests.unit.test_api import System


def test_every_response_carries_a_request_id_and_the_feed_uses_it() -> None:
    system = System()
    with TestClient(system.app) as client:
        given = client.get("/feed/u1", headers={"X-Request-ID": "abc-123"})
        assert given.headers["x-request-id"] == "abc-123"
        assert given.json()["request_id"] == "abc-123"
        made = client.get("/health")
        assert len(made.headers["x-request-id"]) == 32
        odd = client.get("/feed/u1", headers={"X-Request-ID": "bad id with spaces"})
        assert odd.headers["x-request-id"] != "bad id with spaces"


def test_json_logs_carry_topic_partition_offset_and_request_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("streams.io.dead_letter")
    logger.addHandler(handler)
    try:
        bus = InProcessBus(partitions=1, topics=TopicSettings())
        policy = DeadLetterPolicy(bus, "dlq")
        policy.reject(RawMessage("streamrec.interactions", 3, 42, None, b"{oops"), "malformed JSON")
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert (line["topic"], line["partition"], line["offset"]) == ("streamrec.interactions", 3, 42)
    assert line["level"] == "WARNING" and line["request_id"] == "-"
    assert "malformed JSON" in line["msg"]
