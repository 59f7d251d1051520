"""schemathesis's own CLI, every check, against a real `streamrec serve` on Kafka and Redis.

The server runs the default configuration (topics and keys of its own), with a worker, so
accepted events are applied while the fuzzer runs. The run is seeded and bounded by the
repository's ``schemathesis.toml`` (10 cases per operation and phase: well under a minute),
which also states the one check turned off and why (the moving event-time window of POST
/events and /items). Phases: examples, coverage, fuzzing and stateful.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.deployment import Deployment, deployed

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def deployment(kafka_bootstrap: str, redis_url: str) -> Iterator[Deployment]:
    with deployed(Deployment(kafka_bootstrap, redis_url)) as d:
        yield d


def test_schemathesis_finds_no_failure_and_no_server_error(deployment: Deployment) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(schemathesis),
            "--config-file",
            str(ROOT / "schemathesis.toml"),
            "run",
            f"{deployment.base}/openapi.json",
            "--phases",
            "examples,coverage,fuzzing,stateful",
        ],
        capture_output=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
        cwd=ROOT,
    )
    out = result.stdout.decode()
    summary = out[out.rfind("SUMMARY") :]
    assert result.returncode == 0, out[-6000:]
    assert "No issues found" in summary and "Tested: 11" in summary, summary
    assert "Stateful" in summary and "5xx" not in summary
