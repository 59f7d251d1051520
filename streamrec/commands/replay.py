"""`streamrec record` (a topic range to a file) and `streamrec replay` (a file to Kafka).

The reader's options are ``Annotated`` aliases here, with :func:`read_options` and
:func:`reader_errors`, so that every command reading event files (``evaluate`` too) offers
the same flags with the same meaning and fails the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from features.errors import InvalidEventError, StreamrecError
from streamrec.cli_common import ConfigOption, console, setup_command, stop_on_signals
from streams.data.readers import ReadOptions
from streams.data.recording import RecordFormat, RecordingError, RecordRange, parse_time_ms
from streams.data.table_columns import ColumnMapping, ColumnMappingError, TsUnit

if TYPE_CHECKING:
    from streamrec.settings import Settings
    from streams.data.replay import Progress as ReplayProgress
    from streams.schema import Event

ColumnsOption = Annotated[
    str | None,
    typer.Option(
        "--columns",
        help="CSV/TSV column of each field, e.g. user=UserId,item=ItemId,ts=Time,"
        "session=SessionId,type=Event,rating=Rating (user, item, ts required). "
        "Default: our own names (user_id, item_id, ts, session_id, type, event_id).",
    ),
]
TsUnitOption = Annotated[
    TsUnit,
    typer.Option("--ts-unit", help="Unit of numeric ts in CSV/TSV (ISO-8601 dates also work)."),
]
TypeFromRatingOption = Annotated[
    float | None,
    typer.Option(
        "--type-from-rating",
        help="Type from the rating column: rating >= this is a like, below it a view.",
    ),
]
StrictOption = Annotated[
    bool, typer.Option("--strict", help="Stop at the first malformed row instead of skipping.")
]
AssumeSortedOption = Annotated[
    bool,
    typer.Option(
        "--assume-sorted",
        help="The file is in event-time order: stream it instead of sorting it in memory "
        "(rows out of order are rejected).",
    ),
]


def read_options(
    settings: Settings,
    columns: str | None,
    ts_unit: TsUnit = "ms",
    type_from_rating: float | None = None,
    strict: bool = False,
    assume_sorted: bool = False,
) -> ReadOptions:
    """The reader's options from the flags above; a bad ``--columns`` exits with one line."""
    from streamrec.wiring import validator

    with reader_errors():
        mapping = ColumnMapping.parse(columns) if columns is not None else None
    return ReadOptions(
        columns=mapping,
        ts_unit=ts_unit,
        type_from_rating=type_from_rating,
        strict=strict,
        assume_sorted=assume_sorted,
        validator=validator(settings),
    )


@contextmanager
def reader_errors() -> Iterator[None]:
    """Mapping errors exit 2; ``--strict`` rejections and broken files exit 1; one line each."""
    try:
        yield
    except ColumnMappingError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except InvalidEventError as exc:
        console.print(f"[red]rejected (--strict):[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except StreamrecError as exc:  # e.g. a truncated gzip
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    when = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _table(title: str, rows: list[tuple[str, Any]]) -> None:
    table = Table("figure", "value", title=title)
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)


class _NullSink:
    """``--dry-run``: counts what would be sent."""

    def send(self, event: Event) -> None:
        """Drop the event."""

    def flush(self, timeout_s: float = 10.0) -> int:
        """Nothing is ever pending."""
        return 0


def replay(
    file: Annotated[Path, typer.Argument(help="Events file: JSONL (.gz), Parquet, CSV or TSV.")],
    speed: Annotated[
        float | None,
        typer.Option(
            min=0.0001,
            help="Original pacing times this factor (1 = real time, 60 = an hour a minute). "
            "Default: as fast as possible.",
        ),
    ] = None,
    shift_to_now: Annotated[
        bool, typer.Option("--shift-to-now", help="Shift every ts so the stream ends now.")
    ] = False,
    columns: ColumnsOption = None,
    ts_unit: TsUnitOption = "ms",
    type_from_rating: TypeFromRatingOption = None,
    strict: StrictOption = False,
    assume_sorted: AssumeSortedOption = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Read and report, send nothing.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Send a recorded stream or a dataset to Kafka; exit 1 if any row was rejected."""
    from streams.data.readers import ReadReport
    from streams.data.replay import replay_file
    from streams.io.producer import EventProducer

    settings = setup_command(config)
    if not file.is_file():
        console.print(f"[red]no such file:[/red] {file}")
        raise typer.Exit(2)
    options = read_options(settings, columns, ts_unit, type_from_rating, strict, assume_sorted)
    stop = stop_on_signals()
    report = ReadReport()
    producer = (
        None
        if dry_run
        else EventProducer(settings.kafka_bootstrap, settings.topics, settings.kafka_config)
    )
    try:
        with _progress("replay") as (progress, task), reader_errors():

            def show(p: ReplayProgress) -> None:
                eta = "-" if p.eta_s is None else f"{p.eta_s:,.0f} s"
                rate = f"{p.events_per_s:,.0f}"
                progress.update(task, completed=p.sent, total=p.total, rate=rate, eta=eta)

            result = replay_file(
                file,
                producer or _NullSink(),
                options,
                report,
                speed=None if dry_run else speed,
                to_now=shift_to_now,
                on_progress=show,
                stop=stop,
            )
    finally:
        if producer is not None:  # what was sent before a --strict stop still goes out
            producer.close()
    result["dry_run"] = dry_run
    _table(f"replay {file.name}", _replay_rows(result))
    typer.echo(orjson.dumps(result).decode())
    if result["rejected"] or result["undelivered"] or result["interrupted"]:
        raise typer.Exit(1)


def _replay_rows(result: dict[str, Any]) -> list[tuple[str, Any]]:
    """The replay table's rows."""
    dry_run = result["dry_run"]
    return [
        ("events sent", f"{result['sent']:,}" + (" (dry run)" if dry_run else "")),
        ("undelivered", result["undelivered"]),
        ("rows read", f"{result['rows']:,} ({result['format']})"),
        ("rejected", result["rejected"]),
        *((f"  {reason}", count) for reason, count in result["reasons"].items()),
        ("duplicates dropped", result["duplicates"]),
        ("span", f"{_iso(result['first_ts'])} → {_iso(result['last_ts'])}"),
        ("span (s)", f"{result['span_s']:,.1f}"),
        ("sent as", f"{_iso(result['sent_first_ts'])} → {_iso(result['sent_last_ts'])}"),
        ("events/s", result["events_per_s"]),
        *(("note", note) for note in result["notes"]),
    ]


@contextmanager
def _progress(what: str) -> Iterator[tuple[Progress, Any]]:
    columns = (
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} events/s  ETA {task.fields[eta]}"),
    )
    # Only on a terminal: in logs and pipes the summary says it all.
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        yield progress, progress.add_task(what, total=None, rate="0", eta="-")


def record(
    topic: Annotated[
        str,
        typer.Argument(
            help="Topic name, or interactions, items, impressions, dead-letter for ours."
        ),
    ],
    output: Annotated[Path, typer.Argument(help="File: .jsonl, .jsonl.gz or .parquet.")],
    from_offset: Annotated[
        int | None, typer.Option(min=0, help="First offset of each partition.")
    ] = None,
    to_offset: Annotated[
        int | None, typer.Option(min=0, help="Last offset of each partition (included).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="First message time, included: ISO-8601 (UTC if no zone) or ms."),
    ] = None,
    until: Annotated[str | None, typer.Option(help="Message time to stop at, excluded.")] = None,
    partition: Annotated[
        list[int] | None, typer.Option(help="Only this partition (repeatable).")
    ] = None,
    format: Annotated[
        RecordFormat | None,
        typer.Option("--format", help="Override the format the file name implies."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Copy a topic's range to a file; stops at the range's end or the topic's current end."""
    from streams.data.recording import record_topic

    settings = setup_command(config)
    ours = {
        "interactions": settings.topics.interactions,
        "items": settings.topics.items,
        "impressions": settings.topics.impressions,
        "dead-letter": settings.topics.dead_letter,
    }
    name = ours.get(topic, topic)
    wanted = _record_range(from_offset, to_offset, since, until, partition)
    stop: threading.Event = stop_on_signals()
    with _progress("record") as (progress, task):
        try:
            report = record_topic(
                settings.kafka_bootstrap,
                settings.kafka_config,
                name,
                output,
                wanted,
                fmt=format,
                stop=stop,
                on_progress=lambda done, total: progress.update(
                    task, completed=done, total=total, rate="-", eta="-"
                ),
            )
        except StreamrecError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
    result = report.as_dict()
    _table(f"record {name}", _record_rows(result, output))
    typer.echo(orjson.dumps(result).decode())
    if result["stopped"] not in ("end of range", "end of topic"):
        raise typer.Exit(1)


def _record_range(
    from_offset: int | None,
    to_offset: int | None,
    since: str | None,
    until: str | None,
    partition: list[int] | None,
) -> RecordRange:
    """What to record, from the command's options; exit 2 naming what is wrong."""
    try:
        return RecordRange(
            from_offset=from_offset,
            to_offset=to_offset,
            since_ms=parse_time_ms(since) if since is not None else None,
            until_ms=parse_time_ms(until) if until is not None else None,
            partitions=tuple(partition) if partition else None,
        )
    except (ValueError, RecordingError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _record_rows(result: dict[str, Any], output: Path) -> list[tuple[str, Any]]:
    """The record table's rows."""
    return [
        ("messages written", f"{result['written']:,} → {output} ({result['format']})"),
        ("skipped", result["skipped"]),
        *((f"  {reason}", count) for reason, count in result["reasons"].items()),
        *((f"partition {p}", _partition_row(r)) for p, r in result["partitions"].items()),
        ("message times", f"{_iso(result['first_timestamp'])} → {_iso(result['last_timestamp'])}"),
        ("stopped at", result["stopped"]),
    ]


def _partition_row(r: dict[str, Any]) -> str:
    got = f"offsets {r['first_offset']}..{r['last_offset']}" if r["messages"] else "nothing"
    planned = f"{r['start']}..{r['end'] - 1}" if r["end"] > r["start"] else "empty"
    return f"{got} ({r['messages']:,} messages; range {planned}, to {r['bound']})"


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `record` and `replay` to the CLI (``bench`` is unused: no benchmark here)."""
    app.command("record")(record)
    app.command("replay")(replay)
