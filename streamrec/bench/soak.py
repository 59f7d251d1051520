"""`bench soak --minutes N`: everything running for N minutes after a warm-up, watched
minute by minute.

The real worker and the real API run as processes of their own on fresh topics and keys.
The simulator sends ``rate`` events/s through Kafka; a paced client (its own process) asks
the API for feeds at ``requests_per_s``, open loop, so a slow server shows up as latency
rather than as fewer requests. Every second the bench records the worker's backlog (events
sent − applied) and the resident memory (VmRSS) of the worker and the API, and every 10 s
their CPU use, Redis's, the API's per-stage latency and its index size.

The load runs ``warmup_minutes`` before the N measured minutes: the system only reaches its
steady state once the first feeds' attribution windows close (5 minutes by default; from
then on the worker also finalises feeds into the bandit and the ranker) and the event-id
window has filled. The warm-up minutes are reported (``"warmup": true``) but the figures
compare measured minutes only: ``p99_first_ms``/``p99_last_ms`` are the first and last
measured minute's p99, and ``rss_growth_pct`` the larger growth of the two processes over the
measured minutes. Goals for 10 minutes: p99 drift < 20%, RSS growth < 10%, zero errors,
bounded lag.

The stream has 50,000 users by default: at 5,000 events/s, `bench feed`'s catalog / 5 users
would each send 75 events a minute, and their seen-sets and histories would grow through the
whole run instead of holding steady as a real feed's do.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from streamrec.bench.feed import SETUP_TIMEOUT_S, prepare_run, seed_world
from streamrec.bench.feed_servers import ServerProcess
from streamrec.bench.freshness import WorkerRun
from streamrec.bench.freshness_parts import Load
from streamrec.bench.isolation import cleanup, reads_from
from streamrec.bench.latency import percentile
from streamrec.bench.report import print_table
from streamrec.bench.soak_probe import Probe, rss_bytes
from streamrec.settings import Settings

log = logging.getLogger(__name__)

#: Seconds between two readings of CPU use, stage latency and index size.
PROBE_EVERY_S = 10.0


def paced_main() -> None:
    """The load client: ``{"base","paths","rate","seconds","out"}`` on stdin; per request
    ``[start offset s, latency s, ok]`` as one JSON array in the file ``out`` at the end.

    A file, not stdout: the samples outgrow a pipe's buffer, and the parent only reads once
    the client has exited.
    """
    job = orjson.loads(sys.stdin.buffer.read())
    samples = paced_load(job["base"], job["paths"], job["rate"], job["seconds"])
    Path(job["out"]).write_bytes(orjson.dumps(samples))


def paced_load(
    base: str, paths: list[str], rate: float, seconds: float, workers: int = 8
) -> list[tuple[float, float, bool]]:
    """Requests at a fixed rate (open loop) from a few keep-alive clients."""
    samples: list[tuple[float, float, bool]] = []
    lock = threading.Lock()
    started = time.perf_counter()
    total = int(rate * seconds)

    def client(first: int) -> None:
        with httpx.Client(base_url=base, timeout=10.0) as http:
            for n in range(first, total, workers):
                due = started + n / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                elif time.perf_counter() > started + seconds:
                    return  # the run is over: what could not be sent is not sent late
                t0 = time.perf_counter()
                try:
                    ok = http.get(paths[n % len(paths)]).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    samples.append((t0 - started, time.perf_counter() - t0, ok))

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(samples)


def _minutes(
    samples: list[tuple[float, float, bool]],
    backlog: list[tuple[float, int]],
    rss: list[tuple[float, int | None, int | None]],
    minutes: int,
) -> list[dict[str, Any]]:
    """Per-minute figures from the raw samples (times in seconds from the load's start)."""
    rows = []
    for m in range(minutes):
        lo, hi = m * 60.0, (m + 1) * 60.0
        lat = [s[1] for s in samples if lo <= s[0] < hi and s[2]]
        errors = sum(1 for s in samples if lo <= s[0] < hi and not s[2])
        lags = [b for t, b in backlog if lo <= t < hi]
        mem = [r for r in rss if lo <= r[0] < hi]
        rows.append(
            {
                "minute": m + 1,
                "requests": len(lat) + errors,
                "p50_ms": round(percentile(lat, 50) * 1000, 3) if lat else None,
                "p99_ms": round(percentile(lat, 99) * 1000, 3) if lat else None,
                "errors": errors,
                "max_lag": max(lags) if lags else None,
                "worker_rss_mb": round(mem[-1][1] / 2**20, 1) if mem and mem[-1][1] else None,
                "api_rss_mb": round(mem[-1][2] / 2**20, 1) if mem and mem[-1][2] else None,
            }
        )
    return rows


def _growth(rows: list[dict[str, Any]], key: str) -> float | None:
    start, end = rows[0].get(key), rows[-1].get(key)
    return round(100.0 * (end - start) / start, 2) if start and end else None


def run_soak_bench(
    settings: Settings,
    *,
    minutes: int = 10,
    warmup_minutes: int = 6,
    rate: float = 5000.0,
    requests_per_s: float = 40.0,
    catalog: int = 20_000,
    history: int = 50_000,
    users: int = 50_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the whole system for ``minutes`` under load; figures per minute and overall."""
    run, sim, users = prepare_run(settings, catalog, seed, users)
    seconds = (warmup_minutes + minutes) * 60.0
    worker = WorkerRun(run, own_process=True)
    api: ServerProcess | None = None
    load: Load | None = None
    trace = _Trace()
    try:
        worker.start()
        now_ms = seed_world(run, sim, worker, history)
        api = ServerProcess("_api_main", run.model_dump_json(), run.serving.port)
        api.wait_ready(
            lambda r: r.status_code == 200 and r.json()["index"]["items"] >= catalog,
            SETUP_TIMEOUT_S,
        )
        events = list(sim.events(math.ceil(rate * seconds * 1.05), start_ms=now_ms))
        load = Load(run, events, rate)
        rng = np.random.default_rng(seed)
        paths = [f"/feed/u{n}?k=20" for n in rng.integers(0, users, 5000)]
        samples, probe = _drive(run, api, worker, load, trace, paths, requests_per_s, seconds)
    finally:
        if load is not None:
            load.stop.set()
        if api is not None:
            api.close()
        worker.stop()
        cleanup(run)

    rows = _minutes(samples, trace.backlog, trace.rss, warmup_minutes + minutes)
    for row in rows:
        row.update(probe.minute((row["minute"] - 1) * 60.0, row["minute"] * 60.0))
        row["warmup"] = row["minute"] <= warmup_minutes
    figures = _summary(
        rows,
        minutes=minutes,
        warmup_minutes=warmup_minutes,
        rate=rate,
        requests_per_s=requests_per_s,
        missed=max(int(requests_per_s * seconds) - len(samples), 0),
    )
    figures["reads_from"] = reads_from(settings)
    table = {
        f"minute {r['minute']}": orjson.dumps(
            {k: v for k, v in r.items() if k != "minute"}
        ).decode()
        for r in rows
    }
    print_table(
        f"bench soak ({warmup_minutes} min warm-up, {minutes} min measured)",
        {**{k: v for k, v in figures.items() if k != "per_minute"}, **table},
    )
    return figures


@dataclass
class _Trace:
    """Sampled once a second while the load runs: backlog and both processes' RSS."""

    backlog: list[tuple[float, int]] = field(default_factory=list)
    rss: list[tuple[float, int | None, int | None]] = field(default_factory=list)


def _drive(
    run: Settings,
    api: ServerProcess,
    worker: WorkerRun,
    load: Load,
    trace: _Trace,
    paths: list[str],
    requests_per_s: float,
    seconds: float,
) -> tuple[list[tuple[float, float, bool]], Probe]:
    """Run the load and the paced feed client for ``seconds``; the client's samples (time,
    latency, error) and the probe of the worker's and API's own figures."""
    base_applied = worker.applied
    out = Path(tempfile.mkdtemp(prefix="streamrec-soak-")) / "samples.json"
    job = {"base": api.url, "paths": paths, "rate": requests_per_s, "seconds": seconds}
    code = "from streamrec.bench.soak import paced_main; paced_main()"
    client = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    load.start()
    started = time.perf_counter()
    assert client.stdin is not None
    client.stdin.write(orjson.dumps(job | {"out": str(out)}))
    client.stdin.close()
    probe = Probe(api.url, worker.pid or 0, api.pid, run.redis_url)
    next_probe = 0.0
    while client.poll() is None:
        t = time.perf_counter() - started
        trace.backlog.append((t, max(load.sent - (worker.applied - base_applied), 0)))
        trace.rss.append((t, rss_bytes(worker.pid or 0), rss_bytes(api.pid)))
        if t >= next_probe:
            probe.read(t)
            next_probe += PROBE_EVERY_S
        time.sleep(1.0)
    probe.close()
    if client.returncode != 0:
        raise RuntimeError(f"the load client failed with exit code {client.returncode}")
    samples = [(float(a), float(b), bool(c)) for a, b, c in orjson.loads(out.read_bytes())]
    shutil.rmtree(out.parent, ignore_errors=True)
    load.stop.set()
    load.join(timeout=30)
    return samples, probe


def _summary(
    rows: list[dict[str, Any]],
    *,
    minutes: int,
    warmup_minutes: int,
    rate: float,
    requests_per_s: float,
    missed: int,
) -> dict[str, Any]:
    """The run's figures from its minutes."""
    measured = [r for r in rows if not r["warmup"]]
    full = [r for r in measured if r["p99_ms"] is not None]
    # From the end of the warm-up (or of the first minute without one) to the end.
    start = rows[warmup_minutes - 1 : warmup_minutes] or measured[:1]
    growth = [
        g
        for key in ("worker_rss_mb", "api_rss_mb")
        if (g := _growth([*start, measured[-1]], key)) is not None
    ]
    return {
        "bench": "soak",
        "minutes": minutes,
        "warmup_minutes": warmup_minutes,
        "rate_target": rate,
        "requests_per_s_target": requests_per_s,
        "p99_first_ms": full[0]["p99_ms"] if full else None,
        "p99_last_ms": full[-1]["p99_ms"] if full else None,
        "p99_drift_pct": (
            round(100.0 * (full[-1]["p99_ms"] - full[0]["p99_ms"]) / full[0]["p99_ms"], 2)
            if full
            else None
        ),
        "rss_growth_pct": max(growth) if growth else None,
        "errors": sum(r["errors"] for r in rows),
        "p99_max_ms": max((r["p99_ms"] for r in full), default=None),
        # Open loop: requests still unsent when the run ended (the client fell behind).
        "requests_missed": missed,
        "max_lag": max((r["max_lag"] or 0 for r in measured), default=None),
        "max_lag_warmup": max((r["max_lag"] or 0 for r in rows if r["warmup"]), default=None),
        "per_minute": rows,
        "goals": "p99 drift < 20%, rss growth < 10% after warm-up, 0 errors, lag bounded",
    }
