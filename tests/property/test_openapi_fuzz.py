"""schemathesis over the API's own OpenAPI document: no request, however malformed, gets a 5xx.

The app is the one `tests/unit/test_api.py` builds (embedded bus, in-memory store, a worker
that drains what the API produced after every request), so every generated event the API
accepts also goes through the worker. Every operation of the spec gets its schema examples,
the coverage phase (boundary values, missing and mistyped parameters, unsupported methods)
and a bounded number of fuzzed positive and negative cases.

Hard checks, on every response: no 5xx (``not_a_server_error``) and every 422 names the
offending field in ``detail[].loc``. Conformance of responses to the documented schemas,
status codes, content types and headers is recorded too, and asserted by its own test
(``test_responses_conform_to_the_documented_schemas``): the document is the contract, so a
body, status or header it does not describe fails the module.

Run it standalone for the summary (operations, requests, status codes, failures):

    .venv/bin/python tests/property/test_openapi_fuzz.py

Under pytest the same summary is printed at the end of the module and written to
``artifacts/schemathesis-summary.json``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python.asgi import get_client

from serving.settings import ServingSettings
from streamrec.settings import Settings
from streams.schema import Interaction, Item
from tests.unit.test_api import System as ApiSystem

#: Fuzzed cases per operation (the examples and coverage phases add their own, bounded by
#: the spec). Keeps the module well under 90 s.
MAX_EXAMPLES = 60
#: The dashboard's Server-Sent Events never end: read them for this long.
STREAM_TIMEOUT_S = 0.05
API_KEY = "schemathesis-fuzz-key"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def fuzz_settings(serving: ServingSettings) -> tuple[ServingSettings, dict[str, str]]:
    """The serving settings to fuzz with, and the headers every request then carries: a write
    key for POST /events and /items, and no rate limit (the fuzzer is one client sending some
    1,500 requests in a burst; 429s would hide what the API does with the requests). Settings
    this version does not have are left alone."""
    fields = type(serving).model_fields
    update: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if "write_api_keys" in fields:
        update["write_api_keys"] = [API_KEY]
        headers["X-API-Key"] = API_KEY
    if "rate_limit_per_s" in fields:
        update["rate_limit_per_s"] = 0.0
    return type(serving).model_validate({**serving.model_dump(), **update}), headers


class System(ApiSystem):
    """The API test's embedded system with fuzzing settings, and a locked drain."""

    def __init__(self) -> None:
        settings = Settings()
        serving, self.headers = fuzz_settings(settings.serving)
        super().__init__(settings.model_copy(update={"serving": serving}))
        self._lock = threading.Lock()

    def seed(self) -> None:
        """A few items and clicks, so feeds, similar items and trending have content."""
        now = int(time.time() * 1000)
        for n in range(8):
            self.bus.send(Item(item_id=f"i{n}", ts=now, category=f"c{n % 3}", tags=[f"t{n % 2}"]))
        for n in range(30):
            self.bus.send(
                Interaction(
                    event_id=f"seed-{n}",
                    user_id=f"u{n % 5}",
                    item_id=f"i{n % 8}",
                    type="click",
                    ts=now,
                )
            )
        self.drain()

    def drain(self) -> None:
        """Apply everything the API produced; the worker must never raise."""
        with self._lock:
            while self.worker.run_once() or any(self.worker.source.lag().values()):
                pass


@dataclass
class Summary:
    """What the run did, for the report."""

    operations: set[str] = field(default_factory=set)
    requests: int = 0
    #: Requests with a method the spec does not declare for the path (coverage-phase probes).
    method_probes: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)
    #: Distinct (operation, check, detail) of hard-check failures (shrinking replays count once).
    failures: set[tuple[str, str, str]] = field(default_factory=set)
    #: Conformance failures by (operation, check title).
    conformance: Counter[tuple[str, str]] = field(default_factory=Counter)
    started: float = field(default_factory=time.perf_counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "operations_in_spec": SPEC_OPERATIONS,
            "operations_tested": len(self.operations),
            "requests": self.requests,
            "unsupported_method_probes": self.method_probes,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "requests_by_operation": dict(sorted(self.by_operation.items())),
            "server_errors": sum(1 for _, check, _ in self.failures if check == "5xx"),
            "failures": sorted(f"{op} [{check}] {detail}" for op, check, detail in self.failures),
            "conformance_failures": {
                f"{op} [{title}]": n for (op, title), n in sorted(self.conformance.items())
            },
            "seconds": round(time.perf_counter() - self.started, 1),
        }

    def lines(self) -> list[str]:
        d = self.as_dict()
        statuses = ", ".join(f"{k}: {v}" for k, v in d["by_status"].items())
        out = [
            "schemathesis summary",
            f"  operations: {d['operations_tested']} tested"
            f" of {d['operations_in_spec']} in the spec",
            f"  requests:   {d['requests']} ({statuses});"
            f" {d['unsupported_method_probes']} of them probe undeclared methods",
            f"  5xx:        {d['server_errors']}",
            f"  hard-check failures: {len(d['failures'])}",
            f"  time:       {d['seconds']} s",
        ]
        out += [f"    {op}: {n} requests" for op, n in d["requests_by_operation"].items()]
        out += [f"  FAIL {failure}" for failure in d["failures"]]
        broken = [f"    {k}: {n} responses" for k, n in d["conformance_failures"].items()]
        out += ["  responses unlike the documented ones:" + ("" if broken else " none")]
        out += broken
        return out


def names_the_field(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 422 says which field is wrong: ``detail`` is a list of ``{loc: [...], msg}``."""
    if response.status_code != 422:
        return None
    detail = json.loads(response.content).get("detail")
    assert isinstance(detail, list) and detail, f"422 without a detail list: {detail!r}"
    for entry in detail:
        assert isinstance(entry.get("loc"), list) and entry["loc"], f"422 without a loc: {entry}"
        assert entry.get("msg"), f"422 without a message: {entry}"
    return True


# Not `negative_data_rejection`: a scalar query parameter given twice is schema-invalid, and
# FastAPI (like most frameworks) takes the last one; that is no defect, but it fails the check.
HARD_CHECKS = [not_a_server_error]
CONFORMANCE_CHECKS = [
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
]

SUMMARY = Summary()
SYSTEM = System()
#: Loaded from the app's own document without starting the app: `ready_app` below starts its
#: lifespan (resources, index replica, dashboard sampler) in schemathesis's ASGI client.
schema = schemathesis.openapi.from_dict(SYSTEM.app.openapi())
schema.app = SYSTEM.app
# An array body over `maxItems` (10,000 events) is also over `serving.max_body_bytes`, and the
# API answers 413 Content Too Large: a right rejection of a schema-violating request.
_rejection = schema.config.checks.negative_data_rejection
_rejection.expected_statuses = [*_rejection.expected_statuses, "413"]
SPEC_OPERATIONS = sum(len(ops) for ops in SYSTEM.app.openapi()["paths"].values())


@pytest.fixture(scope="module")
def fuzz_system(request: pytest.FixtureRequest) -> Iterator[System]:
    SYSTEM.seed()
    yield SYSTEM
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "schemathesis-summary.json").write_text(json.dumps(SUMMARY.as_dict(), indent=2))
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(SUMMARY.lines()))


@pytest.fixture
def ready_app(fuzz_system: System) -> System:
    """The app started and healthy. schemathesis runs the app's lifespan per test (its pytest
    plugin ends it at each test's teardown), and each start builds a new index replica,
    which rightly answers /health with 503 until it has caught up: fuzz the ready app."""
    app: Any = fuzz_system.app
    with get_client(app) as client:  # starts the lifespan the test's cases share
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "the app never became healthy"
            fuzz_system.drain()  # a heartbeat: /health wants a live worker
            time.sleep(0.02)
    return fuzz_system


def _record_conformance(case: Any, response: Any) -> None:
    try:
        case.validate_response(response, checks=CONFORMANCE_CHECKS)
    except BaseException as exc:  # noqa: BLE001 - a FailureGroup (an exception group)
        for failure in getattr(exc, "exceptions", [exc]):
            title = str(getattr(failure, "title", type(failure).__name__))
            SUMMARY.conformance[(case.operation.label, title)] += 1


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_request_gets_a_server_error(case: Any, ready_app: System) -> None:
    """Positive and negative cases of every operation: 2xx or 4xx, never 5xx; a 422 names the
    field; whatever the API accepted, the worker applies without raising."""
    label = case.operation.label
    kwargs: dict[str, Any] = {}
    if case.path == "/dashboard/events":
        kwargs["timeout"] = STREAM_TIMEOUT_S
    response = case.call(headers=ready_app.headers, **kwargs)
    SUMMARY.operations.add(label)
    SUMMARY.requests += 1
    SUMMARY.method_probes += case.method.upper() != case.operation.method.upper()
    SUMMARY.by_status[response.status_code] += 1
    SUMMARY.by_operation[label] += 1
    ready_app.drain()
    _record_conformance(case, response)
    try:
        case.validate_response(response, checks=HARD_CHECKS, additional_checks=[names_the_field])
    except BaseException as exc:
        for failure in getattr(exc, "exceptions", [exc]):
            check = "5xx" if response.status_code >= 500 else type(failure).__name__
            detail = f"{case.method} -> {response.status_code}: {response.text[:160]}"
            SUMMARY.failures.add((label, check, detail))
        raise


def test_responses_conform_to_the_documented_schemas(fuzz_system: System) -> None:
    """Runs after the fuzzing above and reads what it recorded."""
    if not SUMMARY.requests:
        pytest.skip("needs the fuzzing test of this module to run first")
    assert not SUMMARY.conformance, "\n".join(
        f"{op} [{title}]: {n}" for (op, title), n in sorted(SUMMARY.conformance.items())
    )


#: Bodies schemathesis does not generate (its strings are valid UTF-8 and its JSON shallow)
#: that reach past msgspec's DecodeError/ValidationError.
POISON_BODIES = {
    # item_id: a field both kinds know (msgspec skips unknown fields without checking them)
    "invalid-utf8-in-a-string": b'{"event_id":"e","user_id":"u","item_id":"\xff","type":"click",'
    b'"ts":1}',
    "deeply-nested-unknown-field": b'{"x":' + b"[" * 3000 + b"]" * 3000 + b"}",
}


@pytest.mark.parametrize("body", sorted(POISON_BODIES))
@pytest.mark.parametrize("path", ["/events", "/items"])
def test_undecodable_bodies_get_a_4xx(path: str, body: str) -> None:
    system = System()
    with TestClient(system.app, raise_server_exceptions=False) as client:
        headers = {**system.headers, "content-type": "application/json"}
        response = client.post(path, content=POISON_BODIES[body], headers=headers)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:200])
    assert response.json()["detail"][0]["loc"][0] == "body"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
