"""Replay: pacing and shifting on a fake clock (no sleeps), the summary, and the CLI."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import typer
from typer.testing import CliRunner

from streams.data.readers import ReadOptions, ReadReport
from streams.data.replay import FakeClock, Pacer, Progress, replay_events, replay_file, shifted
from streams.schema import Event, EventValidator, Interaction, Item, encode

NOW = 1_800_000_000_000
VALIDATOR = EventValidator(embedding_dim=2, max_payload_bytes=4096, max_future_ms=60_000)


class ListSink:
    """An EventSink that keeps what it is sent, stamped with the fake clock's time."""

    def __init__(self, clock: FakeClock | None = None, undelivered: int = 0) -> None:
        self.sent: list[tuple[float, Event]] = []
        self.clock, self.undelivered = clock, undelivered

    def send(self, event: Event) -> None:
        self.sent.append((self.clock.monotonic() if self.clock else 0.0, event))

    def flush(self, timeout_s: float = 10.0) -> int:
        return self.undelivered


def click(ts: int, n: int = 0) -> Interaction:
    return Interaction(event_id=f"e{n}-{ts}", user_id="u", item_id="i", type="click", ts=ts)


def test_original_pacing_sends_each_event_at_its_offset_from_the_first() -> None:
    clock = FakeClock()
    sink = ListSink(clock)
    replay_events([click(t) for t in (5_000, 5_500, 5_500, 8_000)], sink, speed=1.0, clock=clock)
    assert [when for when, _ in sink.sent] == [0.0, 0.5, 0.5, 3.0]


def test_a_speed_factor_divides_the_gaps() -> None:
    clock = FakeClock()
    sink = ListSink(clock)
    replay_events([click(t) for t in (0, 60_000, 120_000)], sink, speed=60.0, clock=clock)
    assert [when for when, _ in sink.sent] == [0.0, 1.0, 2.0]


def test_as_fast_as_possible_never_sleeps() -> None:
    clock = FakeClock()
    stats = replay_events([click(t) for t in (0, 10**9)], ListSink(clock), clock=clock)
    assert clock.slept == [] and stats.sent == 2


def test_the_schedule_is_anchored_so_slow_sends_do_not_add_up() -> None:
    """Each send costs 0.3 s of the clock; a gap-by-gap sleeper would drift by 0.3 s each."""

    class SlowSink(ListSink):
        def send(self, event: Event) -> None:
            super().send(event)
            clock.now += 0.3

    clock = FakeClock()
    sink = SlowSink(clock)
    replay_events([click(t) for t in (0, 1_000, 2_000, 2_100)], sink, speed=1.0, clock=clock)
    # 1.0 and 2.0 on time; 2.1 is late (2.3) and goes at once rather than after 0.1 s more.
    assert [round(when, 6) for when, _ in sink.sent] == [0.0, 1.0, 2.0, 2.3]


def test_pacer_rejects_a_speed_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Pacer(0.0, FakeClock())


def test_shift_to_now_makes_the_last_event_now_and_keeps_the_gaps(tmp_path: Path) -> None:
    events: list[Event] = [
        click(1_000, 1),
        Item(item_id="i", ts=2_000, created_at=1_500),
        click(4_000, 2),
    ]
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"".join(encode(e) + b"\n" for e in events))
    clock = FakeClock(wall_ms=NOW)
    sink = ListSink(clock)
    report = ReadReport()
    opts = ReadOptions(validator=VALIDATOR, now_ms=NOW)
    summary = replay_file(path, sink, opts, report, to_now=True, clock=clock)
    sent = [e for _, e in sink.sent]
    assert [e.ts for e in sent] == [NOW - 3_000, NOW - 2_000, NOW]
    item = sent[1]
    assert isinstance(item, Item) and item.created_at == NOW - 2_500  # item age kept
    assert summary["shift_ms"] == NOW - 4_000
    assert (summary["first_ts"], summary["last_ts"]) == (1_000, 4_000)  # as recorded
    assert (summary["sent_first_ts"], summary["sent_last_ts"]) == (NOW - 3_000, NOW)
    assert summary["span_s"] == 3.0


def test_shift_with_assume_sorted_reads_the_file_twice_for_its_end(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"".join(encode(click(t)) + b"\n" for t in (1_000, 2_000, 3_000)))
    clock = FakeClock(wall_ms=NOW)
    sink = ListSink(clock)
    opts = ReadOptions(validator=VALIDATOR, now_ms=NOW, assume_sorted=True)
    report = ReadReport()
    summary = replay_file(path, sink, opts, report, to_now=True, clock=clock)
    assert [e.ts for _, e in sink.sent] == [NOW - 2_000, NOW - 1_000, NOW]
    assert report.rows == 3 and summary["sent"] == 3  # the scouting pass is not counted


def test_shifting_leaves_events_alone_when_there_is_nothing_to_shift() -> None:
    event = click(5)
    assert shifted(event, 0) is event


def test_progress_reports_rate_and_eta_from_event_time_when_paced() -> None:
    clock = FakeClock()
    seen: list[Progress] = []
    events = [click(t * 1_000, t) for t in range(11)]  # 10 s of event time
    replay_events(
        events,
        ListSink(clock),
        speed=2.0,
        clock=clock,
        total=11,
        span=(0, 10_000),
        on_progress=seen.append,
        progress_every_s=1.0,
    )
    # At 2x, after 1 s of wall time 2 s of event time are done: 8 s left = 4 s at 2x.
    first = seen[0]
    assert (first.sent, first.total) == (3, 11)
    assert first.eta_s == pytest.approx(4.0)
    assert first.events_per_s == pytest.approx(3.0)
    assert seen[-1].sent == 11 and seen[-1].eta_s == 0.0


def test_progress_eta_unpaced_is_events_left_over_the_rate() -> None:
    clock = FakeClock()
    seen: list[Progress] = []

    class TimedSink(ListSink):
        def send(self, event: Event) -> None:
            clock.now += 0.01  # 100 events/s

    replay_events(
        [click(t, t) for t in range(100)],
        TimedSink(clock),
        clock=clock,
        total=100,
        on_progress=seen.append,
        progress_every_s=0.5,
    )
    assert seen[0].events_per_s == pytest.approx(100.0)
    assert seen[0].eta_s == pytest.approx((100 - seen[0].sent) / 100)


def test_a_stop_request_interrupts_a_long_gap() -> None:
    stop = threading.Event()

    class StoppingClock(FakeClock):
        def sleep(self, seconds: float) -> None:
            stop.set()  # Ctrl-C arrives during the 1 h gap
            super().sleep(seconds)

    sink = ListSink()
    stats = replay_events(
        [click(0), click(3_600_000)], sink, speed=1.0, clock=StoppingClock(), stop=stop
    )
    assert stats.interrupted and stats.sent == 1


def test_the_summary_carries_rejections_duplicates_and_undelivered(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    good = encode(click(1_000))
    path.write_bytes(good + b"\n" + good + b"\n{bad\n" + encode(click(2_000)) + b"\n")
    report = ReadReport()
    opts = ReadOptions(validator=VALIDATOR, now_ms=NOW)
    summary = replay_file(path, ListSink(undelivered=1), opts, report, clock=FakeClock())
    assert summary["sent"] == 2 and summary["duplicates"] == 1 and summary["undelivered"] == 1
    assert summary["rejected"] == 1 and len(summary["reasons"]) == 1
    orjson.dumps(summary)  # JSON-ready


# ---------------------------------------------------------------- the CLI, without Kafka


@pytest.fixture
def cli() -> Iterator[typer.Typer]:
    from streamrec.commands.replay import register

    app = typer.Typer()
    register(app, typer.Typer())
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield app
    for sig, handler in handlers.items():  # the command installs its own
        signal.signal(sig, handler)


CSV = "UserId,ItemId,Time,Rating\nu1,i1,1700000000,5\nu1,i2,1700000001,2\nu2,i1,bad,4\n"
COLUMNS = "user=UserId,item=ItemId,ts=Time,rating=Rating"


def test_cli_dry_run_prints_the_summary_as_the_last_line(cli: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text(CSV)
    args = ["replay", str(path), "--columns", COLUMNS, "--ts-unit", "s", "--dry-run"]
    result = CliRunner().invoke(cli, [*args, "--type-from-rating", "4"])
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert summary["sent"] == 2 and summary["dry_run"] is True
    assert summary["reasons"] == {"bad ts in column Time": 1}
    assert summary["first_ts"] == 1_700_000_000_000 and summary["span_s"] == 1.0
    assert result.exit_code == 1  # a rejected row, as `streamrec produce` does


def test_cli_missing_column_is_one_line_and_exit_2(cli: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text(CSV)
    spec = "user=UserId,item=ItemId,ts=Timestamp"
    result = CliRunner().invoke(cli, ["replay", str(path), "--columns", spec, "--dry-run"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "column 'Timestamp' (ts=) is not in ratings.csv" in lines[0]


def test_cli_strict_names_the_row(cli: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text(CSV)
    args = ["replay", str(path), "--columns", COLUMNS, "--strict", "--dry-run"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "ratings.csv line 4: bad ts in column Time" in result.stderr


def test_cli_empty_file_is_not_an_error(cli: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    result = CliRunner().invoke(cli, ["replay", str(path), "--dry-run"])
    assert result.exit_code == 0
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert summary["sent"] == 0 and summary["notes"] == ["the file holds no rows"]


def test_cli_record_rejects_a_contradictory_range(cli: typer.Typer, tmp_path: Path) -> None:
    args = ["record", "interactions", str(tmp_path / "x.jsonl"), "--from-offset", "5"]
    result = CliRunner().invoke(cli, [*args, "--since", "2024-01-01T00:00:00Z"])
    assert result.exit_code == 2 and "--from-offset or --since" in result.stderr
