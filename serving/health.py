"""Health of the pieces a feed depends on: the store, the transport and the workers."""

from __future__ import annotations

import time
from typing import Any

from features.errors import StoreUnavailableError
from serving.resources import Resources


def health_report(
    r: Resources, *, worker_stale_s: float, now_s: float | None = None
) -> dict[str, Any]:
    """A JSON-ready report; ``status`` is "ok" only when the store, transport and a worker are."""
    now = time.time() if now_s is None else now_s
    store_ok = r.live.ping()
    transport_ok, transport_detail = r.transport_probe()
    workers: list[dict[str, Any]] = []
    if store_ok:
        try:
            beats = r.live.heartbeats()
        except StoreUnavailableError:
            beats, store_ok = {}, False
        for worker_id, beat in sorted(beats.items()):
            age = now - float(beat.get("ts", 0.0))
            if age > 10 * worker_stale_s:
                continue  # long gone; not worth reporting
            workers.append(
                {
                    "id": worker_id,
                    "alive": age <= worker_stale_s,
                    "heartbeat_age_s": round(age, 3),
                    "applied": beat.get("applied", 0),
                    "dead_lettered": beat.get("dead_lettered", 0),
                    # Times it found the store holding less than it applied, and replayed.
                    "rewinds": beat.get("rewinds", 0),
                    "lag": beat.get("lag", {}),
                    "total_lag": sum(beat.get("lag", {}).values()),
                    # Messages of other topics waiting for the catalog to be applied.
                    "waiting_for_catalog": (beat.get("catalog_wait") or {}).get("waiting", 0),
                }
            )
    consumers_ok = any(w["alive"] for w in workers)
    index = r.replica.status() if r.replica is not None else {"ready": True, "items": 0}
    healthy = store_ok and transport_ok and consumers_ok and index["ready"]
    store: dict[str, Any] = {"ok": store_ok, "detail": "reachable" if store_ok else "unreachable"}
    if r.replication is not None:
        # Reads fall back to the primary while the replica lags: slower, never wrong, so
        # the replica's state is reported and does not degrade the status.
        store["replica"] = r.replication.summary()
    return {
        "status": "ok" if healthy else "degraded",
        "index": index,
        "store": store,
        "transport": {"ok": transport_ok, "detail": transport_detail},
        "consumers": {
            "ok": consumers_ok,
            "detail": f"{sum(w['alive'] for w in workers)} live worker(s)",
            "workers": workers,
        },
    }
