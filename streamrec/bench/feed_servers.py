"""The processes `bench feed` measures: the real API and a trivial FastAPI baseline, each
a uvicorn server in a process of its own with the same server settings, and the HTTP client
that loads them."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import orjson
from fastapi import FastAPI, Query

from serving.responses import JSONBytes
from streamrec.settings import Settings


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api_main() -> None:
    """The real API on Redis and Kafka: settings JSON on stdin's first line."""
    import uvicorn

    from serving.app import create_app
    from streamrec.wiring import kafka_resources

    settings = Settings.model_validate_json(sys.stdin.readline())
    app = create_app(settings.serving, lambda: kafka_resources(settings))
    uvicorn.run(app, host="127.0.0.1", port=settings.serving.port, log_level="warning")


def _trivial_main() -> None:
    """A FastAPI endpoint returning a fixed list of k ids, served like the real API."""
    import uvicorn

    port = int(sys.stdin.readline())
    uvicorn.run(_trivial_app(), host="127.0.0.1", port=port, log_level="warning")


def _trivial_app() -> FastAPI:
    app = FastAPI()
    ids = [f"item-{n}" for n in range(1000)]

    @app.get("/ids", response_class=JSONBytes)
    def fixed(k: Annotated[int, Query(ge=1, le=1000)] = 20) -> JSONBytes:
        return JSONBytes({"items": [{"item_id": i} for i in ids[:k]]})

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


class ServerProcess:
    """A server started with ``python -c``, stopped on close."""

    def __init__(self, main: str, first_line: str, port: int) -> None:
        self.port = port
        code = f"from streamrec.bench.feed_servers import {main}; {main}()"
        self._process = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self._process.stdin is not None
        self._process.stdin.write(first_line.encode() + b"\n")
        self._process.stdin.flush()

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self._process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, ready: Callable[[httpx.Response], bool], timeout_s: float) -> None:
        """Poll /health until ``ready`` accepts it."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"server on port {self.port} exited")
                try:
                    if ready(client.get(self.url + "/health")):
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"server on port {self.port} not ready after {timeout_s} s")

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)


@dataclass
class LoadResult:
    """What a load run saw."""

    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    traces: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return len(self.latencies_s) / self.seconds if self.seconds else 0.0


def run_load(
    base: str, paths: Sequence[str], *, connections: int, seconds: float, traces: bool = False
) -> LoadResult:
    """:func:`load_here` in a process of its own, so the measuring client never waits for
    this process's GIL (the bench's producer thread holds it at 5k events/s)."""
    job = {
        "base": base,
        "paths": list(paths),
        "connections": connections,
        "seconds": seconds,
        "traces": traces,
    }
    code = "from streamrec.bench.feed_servers import load_main; load_main()"
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=orjson.dumps(job),
        capture_output=True,
        check=True,
        timeout=seconds + 120,
    )
    out = orjson.loads(done.stdout)
    return LoadResult(out["seconds"], out["latencies_s"], out["errors"], out["traces"])


def load_main() -> None:
    job = orjson.loads(sys.stdin.buffer.read())
    result = load_here(
        job["base"],
        job["paths"],
        connections=job["connections"],
        seconds=job["seconds"],
        traces=job["traces"],
    )
    sys.stdout.buffer.write(
        orjson.dumps(
            {
                "seconds": result.seconds,
                "latencies_s": result.latencies_s,
                "errors": result.errors,
                "traces": result.traces,
            }
        )
    )


def load_here(
    base: str, paths: Sequence[str], *, connections: int, seconds: float, traces: bool = False
) -> LoadResult:
    """``connections`` keep-alive clients, each requesting the next path as soon as the last
    answer arrived (closed loop), for ``seconds``."""
    result = LoadResult()
    lock = threading.Lock()
    stop = threading.Event()

    def client(offset: int) -> None:
        n = offset
        with httpx.Client(base_url=base, timeout=10.0) as http:
            while not stop.is_set():
                path = paths[n % len(paths)]
                n += connections
                started = time.perf_counter()
                try:
                    response = http.get(path)
                    elapsed = time.perf_counter() - started
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    elapsed, ok = 0.0, False
                with lock:
                    if not ok:
                        result.errors += 1
                        continue
                    result.latencies_s.append(elapsed)
                    if traces:
                        trace = orjson.loads(response.content).get("trace")
                        if trace is not None:
                            result.traces.append(trace)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=15)
    result.seconds = time.perf_counter() - started
    return result
