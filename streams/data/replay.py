"""Replay a recorded stream into a sink (Kafka, through the producer), paced and shifted.

Pacing and shifting are pure: a :class:`Clock` is passed in, so that tests drive them with
a fake clock and no sleeps. The file side is :func:`streams.data.readers.read_events`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec

from streams.data.readers import ReadOptions, ReadReport, read_events
from streams.io.transport import EventSink
from streams.schema import Event, Item


class Clock(Protocol):
    """Monotonic seconds, wall-clock milliseconds, and a sleep that may end early."""

    def monotonic(self) -> float: ...

    def wall_ms(self) -> int: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock; ``sleep`` returns early once ``stop`` is set (Ctrl-C)."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop or threading.Event()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return int(time.time() * 1000)

    def sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)


class Pacer:
    """Holds each event back until its original time since the first event, ÷ ``speed``.

    The schedule is anchored at the first event rather than sleeping each gap in turn, so
    that the time spent sending and oversleeping does not pile up over a long replay.
    ``speed=None`` sends as fast as possible.

    Examples:
        >>> clock = FakeClock()
        >>> pacer = Pacer(speed=2.0, clock=clock)
        >>> for ts in (10_000, 10_000, 14_000, 13_000):
        ...     pacer.wait_until(ts)
        >>> clock.slept  # 4 s of event time at 2x; the late event goes at once
        [2.0]
    """

    def __init__(self, speed: float | None, clock: Clock) -> None:
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive (None: as fast as possible)")
        self.speed, self.clock = speed, clock
        self._anchor: tuple[float, int] | None = None  # (monotonic s, event ts) of the first

    def due(self, ts_ms: int) -> float:
        """Monotonic time at which the event of ``ts_ms`` is due."""
        if self._anchor is None:
            self._anchor = (self.clock.monotonic(), ts_ms)
        start, first_ts = self._anchor
        if self.speed is None:
            return start
        return start + (ts_ms - first_ts) / 1000 / self.speed

    def wait_until(self, ts_ms: int) -> None:
        """Sleep until the event of ``ts_ms`` is due (at once when unpaced or late)."""
        delay = self.due(ts_ms) - self.clock.monotonic()
        if self.speed is not None and delay > 0:
            self.clock.sleep(delay)


class FakeClock:
    """A clock for tests: sleeping moves time forward and is recorded.

    Examples:
        >>> c = FakeClock(wall_ms=1000)
        >>> c.sleep(1.5); c.monotonic(), c.wall_ms(), c.slept
        (1.5, 2500, [1.5])
    """

    def __init__(self, wall_ms: int = 0) -> None:
        self.now = 0.0
        self.wall0 = wall_ms
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall_ms(self) -> int:
        return self.wall0 + round(self.now * 1000)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def shift_to_now(last_ts: int, now_ms: int) -> int:
    """The shift that moves a stream ending at ``last_ts`` to end at ``now_ms``.

    Examples:
        >>> shift_to_now(last_ts=1_000, now_ms=61_000)
        60000
    """
    return now_ms - last_ts


def shifted(event: Event, shift_ms: int) -> Event:
    """``event`` moved in time by ``shift_ms``.

    An item's ``created_at`` moves with it: the funnel's freshness boost and age window
    compare it with now, so an unshifted one would make every replayed item look old.

    Examples:
        >>> from streams.schema import Item
        >>> e = shifted(Item(item_id="i", ts=1_000, created_at=400), 500)
        >>> e.ts, e.created_at
        (1500, 900)
    """
    if not shift_ms:
        return event
    if isinstance(event, Item) and event.created_at is not None:
        return msgspec.structs.replace(
            event, ts=event.ts + shift_ms, created_at=max(0, event.created_at + shift_ms)
        )
    return msgspec.structs.replace(event, ts=event.ts + shift_ms)


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress update: events sent so far, of ``total`` when known."""

    sent: int
    total: int | None
    events_per_s: float
    eta_s: float | None


@dataclass(slots=True)
class ReplayStats:
    """What a replay did (the reader's report has what it rejected)."""

    sent: int = 0
    undelivered: int = 0
    shift_ms: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False


def replay_events(
    events: Iterable[Event],
    sink: EventSink,
    *,
    speed: float | None = None,
    shift_ms: int = 0,
    clock: Clock | None = None,
    total: int | None = None,
    span: tuple[int, int] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_every_s: float = 0.2,
    stop: threading.Event | None = None,
) -> ReplayStats:
    """Send ``events`` (in time order) to ``sink``, paced by ``speed``, moved by ``shift_ms``.

    ``total`` and ``span`` (first and last original ts), when known, give the ETA: paced,
    it is the event time left ÷ speed; unpaced, the events left ÷ the rate so far.

    Examples:
        >>> from streams.schema import Interaction
        >>> class ListSink(list):
        ...     def send(self, event): self.append(event)
        ...     def flush(self, timeout_s=10.0): return 0
        >>> sink, clock = ListSink(), FakeClock(wall_ms=50_000)
        >>> events = [Interaction(event_id=f"e{t}", user_id="u", item_id="i", type="view", ts=t)
        ...           for t in (0, 1_000, 3_000)]
        >>> stats = replay_events(events, sink, speed=1.0, shift_ms=47_000, clock=clock)
        >>> [e.ts for e in sink], clock.slept, stats.sent
        ([47000, 48000, 50000], [1.0, 2.0], 3)
    """
    clock = clock or SystemClock(stop)
    pacer = Pacer(speed, clock)
    stats = ReplayStats(shift_ms=shift_ms)
    started = last_report = clock.monotonic()
    current_ts: int | None = None

    def report() -> None:
        if on_progress is None:
            return
        elapsed = clock.monotonic() - started
        rate = stats.sent / elapsed if elapsed > 0 else 0.0
        eta: float | None = None
        if speed is not None and span is not None and current_ts is not None:
            eta = max(0.0, (span[1] - current_ts) / 1000 / speed)
        elif total is not None and rate > 0:
            eta = max(0, total - stats.sent) / rate
        on_progress(Progress(stats.sent, total, rate, eta))

    for event in events:
        if stop is not None and stop.is_set():
            stats.interrupted = True
            break
        pacer.wait_until(event.ts)
        if stop is not None and stop.is_set():  # Ctrl-C during a long gap
            stats.interrupted = True
            break
        sink.send(shifted(event, shift_ms))
        stats.sent += 1
        current_ts = event.ts
        if clock.monotonic() - last_report >= progress_every_s:
            last_report = clock.monotonic()
            report()
    stats.undelivered = sink.flush(30.0)
    stats.elapsed_s = clock.monotonic() - started
    report()
    return stats


def replay_file(
    path: str | Path,
    sink: EventSink,
    options: ReadOptions,
    report: ReadReport,
    *,
    speed: float | None = None,
    to_now: bool = False,
    clock: Clock | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Replay a file into ``sink``; return the summary (what was sent, rejected, its span).

    The reader sorts in memory unless ``options.assume_sorted``; then the file streams
    through once (twice with ``to_now``: the first pass finds the last event time).
    """
    clock = clock or SystemClock(stop)
    events: Iterable[Event]
    if options.assume_sorted:
        # Streamed; the span (for the shift and the ETA) needs a pass of its own.
        scout = _scout(path, options) if to_now else None
        events = read_events(path, options, report)
    else:
        events = list(read_events(path, options, report))
        scout = report
    total = scout.events if scout is not None else None
    span = _span(scout) if scout is not None else None
    shift = shift_to_now(span[1], clock.wall_ms()) if to_now and span else 0
    stats = replay_events(
        events,
        sink,
        speed=speed,
        shift_ms=shift,
        clock=clock,
        total=total,
        span=span,
        on_progress=on_progress,
        stop=stop,
    )
    return summary(report, stats, speed)


def _scout(path: str | Path, options: ReadOptions) -> ReadReport:
    scout = ReadReport()
    for _ in read_events(path, options, scout):
        pass
    return scout


def _span(report: ReadReport) -> tuple[int, int] | None:
    if report.first_ts is None or report.last_ts is None:
        return None
    return report.first_ts, report.last_ts


def summary(report: ReadReport, stats: ReplayStats, speed: float | None) -> dict[str, Any]:
    """One JSON-ready dict: the read report, what was sent, and the span in both clocks."""
    read = report.as_dict()
    first, last = report.first_ts, report.last_ts
    shift = stats.shift_ms
    return {
        "sent": stats.sent,
        "undelivered": stats.undelivered,
        "rejected": read["rejected"],
        "reasons": read["reasons"],
        "duplicates": report.duplicates,
        "rows": report.rows,
        "format": report.format,
        "sorted_input": report.sorted_input,
        "first_ts": first,
        "last_ts": last,
        "span_s": (last - first) / 1000 if first is not None and last is not None else 0.0,
        "shift_ms": shift,
        "sent_first_ts": first + shift if first is not None else None,
        "sent_last_ts": last + shift if last is not None else None,
        "speed": speed,
        "elapsed_s": round(stats.elapsed_s, 3),
        "events_per_s": round(stats.sent / stats.elapsed_s, 1) if stats.elapsed_s > 0 else None,
        "interrupted": stats.interrupted,
        "notes": read["notes"],
    }
