"""The embedded default: simulator → in-process bus → worker → in-memory store → API, in one
process, with the same processors and API as the Kafka mode."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI

from features.stores.memory_store import InMemoryStore
from serving.app import create_app
from streamrec.settings import Settings
from streamrec.wiring import build_worker, embedded_resources
from streams.bus import InProcessBus
from streams.simulator import SimulatorConfig, StreamSimulator

log = logging.getLogger(__name__)


@dataclass
class EmbeddedSystem:
    """Everything the demo runs, wired for one process."""

    settings: Settings
    seed: int = 42
    rate: float = 200.0
    bus: InProcessBus = field(init=False)
    store: InMemoryStore = field(init=False)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.bus = InProcessBus(
            partitions=self.settings.topics.partitions, topics=self.settings.topics
        )
        self.store = InMemoryStore()
        self.simulator = StreamSimulator(
            SimulatorConfig(
                embedding_dim=self.settings.features.embedding_dim, interval_s=1.0 / self.rate
            ),
            seed=self.seed,
        )
        self.worker = build_worker(
            self.settings,
            self.bus.source(
                self.settings.topics.worker_inputs,
                self.settings.worker.group_id,
            ),
            self.store,
            self.bus,
            worker_id="embedded",
        )
        self._threads: list[threading.Thread] = []

    def app(self) -> FastAPI:
        """The same API as `streamrec serve`, on the embedded bus and store."""
        return create_app(
            self.settings.serving, lambda: embedded_resources(self.settings, self.bus, self.store)
        )

    def start(self) -> None:
        """Publish the catalog, then stream events and apply them in background threads."""
        now_ms = int(time.time() * 1000)
        for item in self.simulator.initial_items(now_ms - 3_600_000):
            self.bus.send(item)
        for target, name in ((self._stream, "simulator"), (self.worker.run, "worker")):
            thread = threading.Thread(target=target, args=(self.stop,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _stream(self, stop: threading.Event) -> None:
        tick_s = 0.1
        carry = 0.0
        while not stop.wait(tick_s):
            carry += self.rate * tick_s
            count, carry = int(carry), carry - int(carry)
            for event in self.simulator.events(count, start_ms=int(time.time() * 1000) - 100):
                self.bus.send(event)

    def close(self) -> None:
        """Stop the threads."""
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=10)


def run_demo(settings: Settings, *, seed: int, rate: float, duration_s: float | None) -> None:
    """Run the embedded system and serve it until interrupted (or for ``duration_s``)."""
    system = EmbeddedSystem(settings, seed=seed, rate=rate)
    system.start()
    host, port = settings.serving.host, settings.serving.port
    log.info(
        "demo streaming %.0f events/s (seed %d); try http://%s:%d/feed/u1", rate, seed, host, port
    )
    server = uvicorn.Server(uvicorn.Config(system.app(), host=host, port=port, log_level="warning"))
    if duration_s is not None:
        threading.Timer(duration_s, lambda: setattr(server, "should_exit", True)).start()
    try:
        server.run()
    finally:
        system.close()
