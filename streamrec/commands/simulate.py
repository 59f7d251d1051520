"""`streamrec simulate`: a seeded synthetic stream, written as JSONL or produced to Kafka.

The catalog comes first (one item event per initial item), then the stream. To a file the
events are written as fast as they are made, timestamped so that the stream ends about
now (so `streamrec produce FILE` accepts it at once); to Kafka they are paced at
``--rate`` and timestamped with the wall clock, like a live feed.
"""

from __future__ import annotations

import gzip
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer

from features.errors import StreamrecError
from streamrec.cli_common import ConfigOption, console, setup_command, stop_on_signals
from streamrec.settings import Settings
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.io.transport import EventSink
from streams.schema import Event, Interaction, Item, encode

#: Seconds between two progress lines.
PROGRESS_EVERY_S = 5.0
#: Events a file gets when neither --events nor --seconds is given.
DEFAULT_FILE_EVENTS = 100_000


@dataclass
class Summary:
    """What a run produced, counted as it goes; printed as one JSON line at the end."""

    seed: int
    output: str
    catalog_items: int = 0
    events: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    first_ts: int | None = None
    last_ts: int | None = None
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None  # when the last event was handed over (before any flush)
    interrupted: bool = False
    undelivered: int = 0  # still queued, or failed, after the final flush

    def add(self, event: Event) -> None:
        """Count one stream event (not a catalog item)."""
        self.events += 1
        if isinstance(event, Interaction):
            self.kinds[event.type] += 1
        elif isinstance(event, Item):
            kind = "delete" if event.op == "delete" else "new_item" if event.available else None
            self.kinds[kind or "unavailable"] += 1
        if self.first_ts is None:
            self.first_ts = event.ts
        self.last_ts = event.ts

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        seconds = (self.ended or time.monotonic()) - self.started
        return {
            "output": self.output,
            "seed": self.seed,
            "catalog_items": self.catalog_items,
            "events": self.events,
            "by_kind": dict(sorted(self.kinds.items())),
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "seconds": round(seconds, 3),
            "events_per_s": round(self.events / seconds, 1) if seconds > 0 else None,
            "interrupted": self.interrupted,
            "undelivered": self.undelivered,
        }


class Writer(Protocol):
    """Where JSONL lines go: a file, a gzip file or stdout."""

    def write(self, data: bytes, /) -> int:
        """Write bytes; return how many."""
        ...


class Progress:
    """One line on stderr every few seconds."""

    def __init__(self, summary: Summary, every_s: float = PROGRESS_EVERY_S) -> None:
        self.summary = summary
        self.every_s = every_s
        self._next = time.monotonic() + every_s

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every_s
            rate = self.summary.events / max(now - self.summary.started, 1e-9)
            console.print(f"simulate: {self.summary.events:,} events ({rate:,.0f}/s)")


def write_jsonl(
    sim: StreamSimulator,
    out: Writer,
    *,
    events: int,
    start_ms: int,
    summary: Summary,
    catalog: bool = True,
) -> None:
    """The catalog at ``start_ms``, then ``events`` events after it, one JSON per line."""
    for item in sim.initial_items(start_ms) if catalog else []:
        out.write(encode(item) + b"\n")
        summary.catalog_items += 1
    progress = Progress(summary)
    for event in sim.events(events, start_ms):
        out.write(encode(event) + b"\n")
        summary.add(event)
        if summary.events % 10_000 == 0:
            progress.tick()


def produce_paced(
    sim: StreamSimulator,
    sink: EventSink,
    *,
    rate: float,
    total: int | None,
    stop: threading.Event,
    summary: Summary,
    tick_s: float = 0.05,
    clock_ms: Callable[[], float] = lambda: time.time() * 1000.0,
) -> None:
    """Send ``total`` events (None: until ``stop``) to ``sink`` at ``rate`` events/s, each
    timestamped at about the wall-clock time it is sent."""
    progress = Progress(summary)
    started = time.monotonic()
    sent = 0
    while not stop.is_set() and (total is None or sent < total):
        due = int(rate * (time.monotonic() - started)) - sent
        if total is not None:
            due = min(due, total - sent)
        if due <= 0:
            stop.wait(tick_s)
            continue
        # The batch's event times end at about now: it is what was due since the last one.
        now_ms = clock_ms()
        for event in sim.events(due, start_ms=int(now_ms - due * 1000.0 / rate)):
            sink.send(event)
            summary.add(event)
        sent += due
        progress.tick()


def _stream_count(events: int | None, seconds: float | None, rate: float) -> int | None:
    if events is not None and seconds is not None:
        console.print("[red]give --events or --seconds, not both[/red]")
        raise typer.Exit(2)
    if seconds is not None:
        return max(1, round(seconds * rate))
    return events


def _open_output(output: str, stack: ExitStack) -> Writer:
    if output == "-":
        return sys.stdout.buffer
    path = Path(output)
    if path.suffix == ".gz":
        return stack.enter_context(gzip.open(path, "wb"))
    return stack.enter_context(path.open("wb"))


def simulate(
    events: Annotated[
        int | None, typer.Option(min=1, help="Stream events after the catalog.")
    ] = None,
    seconds: Annotated[
        float | None,
        typer.Option(min=0.001, help="Seconds of stream at --rate (instead of --events)."),
    ] = None,
    rate: Annotated[
        float, typer.Option(min=0.001, help="Events/s: event-time spacing, and Kafka's pace.")
    ] = 200.0,
    seed: Annotated[int, typer.Option(min=0, help="Seed: the same seed, the same stream.")] = 0,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="JSONL file (.gz compresses; - for stdout)."),
    ] = None,
    kafka: Annotated[
        bool, typer.Option("--kafka", help="Produce to Kafka at --rate instead of a file.")
    ] = False,
    users: Annotated[int, typer.Option(min=1, help="Simulated users.")] = 2_000,
    items: Annotated[int, typer.Option(min=1, help="Items in the initial catalog.")] = 5_000,
    catalog: Annotated[
        bool, typer.Option(help="Send the initial catalog before the stream.")
    ] = True,
    new_items: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Chance an event is a new item.")
    ] = 0.002,
    churn: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Chance an event retires an item.")
    ] = 0.0,
    drift: Annotated[
        float,
        typer.Option(min=0.0, help="Seconds over which tastes move to another category (0: off)."),
    ] = 0.0,
    category_shift: Annotated[
        float,
        typer.Option(min=0.0, help="Seconds of one cycle of category popularity (0: off)."),
    ] = 0.0,
    bursts: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Chance an event starts a trending burst.")
    ] = 0.0005,
    start_ms: Annotated[
        int | None,
        typer.Option(min=0, help="Event time of the first event (file; default: ends now)."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Write a seeded synthetic stream as JSONL, or produce it to Kafka at a target rate.

    Without --events or --seconds a file gets 100,000 events and Kafka gets events until
    Ctrl-C. The last stdout line is a JSON summary (on stderr when the events go to stdout).
    """
    settings = setup_command(config)
    if kafka == (output is not None):
        console.print("[red]give exactly one of --output FILE and --kafka[/red]")
        raise typer.Exit(2)
    total = _stream_count(events, seconds, rate)
    sim = StreamSimulator(
        SimulatorConfig(
            users=users,
            items=items,
            embedding_dim=settings.features.embedding_dim,
            interval_s=1.0 / rate,
            new_item_probability=new_items,
            churn_probability=churn,
            taste_drift_period_s=drift,
            category_shift_period_s=category_shift,
            burst_probability=bursts,
        ),
        seed=seed,
    )
    summary = Summary(seed=seed, output="kafka" if kafka else str(output))
    if kafka:
        _to_kafka(settings, sim, rate=rate, total=total, catalog=catalog, summary=summary)
    else:
        assert output is not None  # noqa: S101 - checked above; narrows the type
        _to_file(
            sim, output, rate=rate, total=total, start_ms=start_ms, catalog=catalog, summary=summary
        )
    _report(summary, to_stdout=output == "-")


def _report(summary: Summary, *, to_stdout: bool) -> None:
    """The JSON summary line (on stderr when the events went to stdout); exit 1 when some
    were not delivered."""
    line = json.dumps(summary.as_dict())
    if to_stdout:
        console.print(line, highlight=False, soft_wrap=True)
    else:
        typer.echo(line)
    if summary.undelivered:
        raise typer.Exit(1)


def _to_file(
    sim: StreamSimulator,
    output: str,
    *,
    rate: float,
    total: int | None,
    start_ms: int | None,
    catalog: bool,
    summary: Summary,
) -> None:
    """Write the stream as JSONL; without ``start_ms`` it ends now, spaced by ``rate``."""
    count = DEFAULT_FILE_EVENTS if total is None else total
    first = start_ms if start_ms is not None else int(time.time() * 1000 - count / rate * 1e3)
    with ExitStack() as stack:
        out = _open_output(output, stack)
        try:
            write_jsonl(sim, out, events=count, start_ms=first, summary=summary, catalog=catalog)
        except KeyboardInterrupt:
            summary.interrupted = True
    summary.ended = time.monotonic()


def _to_kafka(
    settings: Settings,
    sim: StreamSimulator,
    *,
    rate: float,
    total: int | None,
    catalog: bool,
    summary: Summary,
) -> None:
    from streams.io.producer import EventProducer

    stop = stop_on_signals()
    producer = EventProducer(settings.kafka_bootstrap, settings.topics, settings.kafka_config)
    try:
        missing = {settings.topics.interactions, settings.topics.items} - (
            producer.raw.list_topics(timeout_s=10.0)
        )
        if missing:
            console.print(f"[red]no such topics: {sorted(missing)}; run `streamrec topics create`")
            raise typer.Exit(2)
        if catalog:
            for item in sim.initial_items(int(time.time() * 1000)):
                producer.send(item)
                summary.catalog_items += 1
        produce_paced(sim, producer, rate=rate, total=total, stop=stop, summary=summary)
    except StreamrecError as exc:
        console.print(f"[red]simulate: {exc}[/red]")
        summary.interrupted = True
    finally:
        summary.ended = time.monotonic()
        summary.interrupted = summary.interrupted or stop.is_set()
        summary.undelivered = producer.flush(30.0) + producer.raw.failed


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `streamrec simulate` to the CLI."""
    app.command("simulate")(simulate)
