"""Recorded streams and public datasets read from files as schema events, in event-time order.

No Kafka here: ``streamrec replay`` sends what :func:`read_events` yields, and
``streamrec evaluate`` feeds it to the funnel. Inputs:

- JSON lines of our schema (``.jsonl``, ``.json``, ``.ndjson``): interactions, items and
  impressions, each kind told by its fields (what ``streamrec record`` writes);
- Parquet recordings of ``streamrec record`` (the ``value`` column);
- any CSV or TSV (by extension, else by sniffing the delimiter) through a
  :class:`ColumnMapping`, e.g. RetailRocket's ``events.csv`` with
  ``user=visitorid,item=itemid,ts=timestamp,type=event``.

Any of them may be gzipped (told by its first bytes, not by its name). Bad rows are skipped
and counted by reason in a :class:`ReadReport`, or stop the read with ``strict``.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, TypeAlias, cast

import msgspec

from features.errors import InvalidEventError, StreamrecError
from features.settings import FeatureSettings
from streams.data.jsonl import parse_line
from streams.data.table_columns import (
    DEFAULT_TYPE_MAP,
    ColumnMapping,
    ColumnMappingError,
    MissingColumnError,
    RowConverter,
    TsUnit,
)
from streams.schema import Event, EventValidator, Impression, Interaction, InteractionType
from streams.settings import WorkerSettings

__all__ = [
    "OUT_OF_ORDER",
    "ColumnMapping",
    "ColumnMappingError",
    "MissingColumnError",
    "ReadOptions",
    "ReadReport",
    "TsUnit",
    "UnreadableFileError",
    "read_events",
]

Format: TypeAlias = Literal["jsonl", "csv", "tsv", "parquet"]


class UnreadableFileError(StreamrecError):
    """The file itself is broken (e.g. a truncated gzip), not just some of its rows."""


def _default_validator() -> EventValidator:
    limits = WorkerSettings()
    return EventValidator(
        embedding_dim=FeatureSettings().embedding_dim,
        max_payload_bytes=limits.max_payload_bytes,
        max_future_ms=limits.max_future_ms,
    )


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How to turn a file into events.

    ``type_from_rating``: when set, a row's type comes from its rating column, not from a
    type column: a rating at or above the threshold is a ``like``, below it a ``view`` (the
    user consumed the item but did not endorse it). Without it and without a type column,
    every row is ``default_type``. A type column's values go through ``type_map``.
    """

    columns: ColumnMapping | None = None
    ts_unit: TsUnit = "ms"
    type_from_rating: float | None = None
    default_type: InteractionType = "click"
    type_map: Mapping[str, InteractionType] = field(default_factory=lambda: DEFAULT_TYPE_MAP)
    strict: bool = False
    assume_sorted: bool = False
    validator: EventValidator = field(default_factory=_default_validator)
    #: "Now" of the validator's future check; the wall clock when None.
    now_ms: int | None = None


@dataclass(slots=True)
class ReadReport:
    """What a read saw: rows, events yielded, rejections by reason, duplicates, time span."""

    path: str = ""
    format: str = ""
    rows: int = 0
    events: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    sorted_input: bool = True
    first_ts: int | None = None
    last_ts: int | None = None

    def notes(self) -> list[str]:
        """One line per thing a user should know about the input."""
        out = []
        if self.rows == 0:
            out.append("the file holds no rows")
        if self.duplicates:
            out.append(f"{self.duplicates} duplicate events dropped (first one kept)")
        if not self.sorted_input:
            out.append(
                "rows were out of event-time order: rejected (--assume-sorted)"
                if self.rejected.get(OUT_OF_ORDER)
                else "rows were out of event-time order: sorted in memory"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "path": self.path,
            "format": self.format,
            "rows": self.rows,
            "events": self.events,
            "rejected": sum(self.rejected.values()),
            "reasons": dict(self.rejected.most_common()),
            "duplicates": self.duplicates,
            "sorted_input": self.sorted_input,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "notes": self.notes(),
        }


OUT_OF_ORDER = "out of order"


def read_events(
    path: str | Path, options: ReadOptions | None = None, report: ReadReport | None = None
) -> Iterator[Event]:
    """The file's valid events in event-time order, each duplicate dropped; see the module.

    Raises :class:`ColumnMappingError` (e.g. :class:`MissingColumnError`) before the first
    event when the mapping does not fit, and :class:`InvalidEventError` naming the line at the
    first bad row when ``options.strict``.

    Examples:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "ratings.csv"
        >>> _ = path.write_text("UserId,MovieId,Rating,Time\\n"
        ...                     "u1,m1,5,1700000060\\nu1,m2,2,1700000000\\nu2,m1,x,1700000001\\n")
        >>> options = ReadOptions(columns=ColumnMapping.parse(
        ...     "user=UserId,item=MovieId,ts=Time,rating=Rating"), ts_unit="s", type_from_rating=4)
        >>> report = ReadReport()
        >>> [(e.item_id, e.type, e.ts) for e in read_events(path, options, report)]
        [('m2', 'view', 1700000000000), ('m1', 'like', 1700000060000)]
        >>> report.rejected, report.sorted_input
        (Counter({'bad rating in column Rating': 1}), False)
    """
    options = options or ReadOptions()
    report = report if report is not None else ReadReport()
    path = Path(path)
    report.path = str(path)
    now_ms = options.now_ms if options.now_ms is not None else int(time.time() * 1000)
    rows = _rows(path, options, report, now_ms)
    return _ordered(_checked(rows, path, options, report), options, report)


# ---------------------------------------------------------------- formats and rows

_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
# One row's outcome: (line number, the event or the reason it was rejected).
_Row: TypeAlias = tuple[int, Event | str]


def _open(path: Path) -> IO[bytes]:
    raw = path.open("rb")
    if raw.read(2) == _GZIP_MAGIC:
        raw.seek(0)
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    raw.seek(0)
    return raw


def detect_format(name: str, head: bytes) -> tuple[Format, str]:
    """(format, CSV delimiter) from the file name, else from its first bytes.

    Examples:
        >>> detect_format("events.jsonl.gz", b"")
        ('jsonl', '')
        >>> detect_format("ratings.dat", b"UserId;ItemId;Time\\n1;2;3\\n")
        ('csv', ';')
    """
    suffixes = [s.lower() for s in Path(name).suffixes if s.lower() != ".gz"]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl", ""
    if suffix == ".parquet" or head.startswith(_PARQUET_MAGIC):
        return "parquet", ""
    if suffix in (".tsv", ".tab"):
        return "tsv", "\t"
    if suffix == ".csv":
        return "csv", ","
    if head.lstrip().startswith(b"{"):
        return "jsonl", ""
    sample = head.decode("utf-8", errors="replace")
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",\t;|").delimiter
    except csv.Error:
        delimiter = ","
    return ("tsv" if delimiter == "\t" else "csv"), delimiter


def _rows(path: Path, options: ReadOptions, report: ReadReport, now_ms: int) -> Iterator[_Row]:
    try:
        with _open(path) as stream:
            head = stream.read(64 * 1024)
    except (OSError, EOFError, zlib.error) as exc:
        raise UnreadableFileError(f"cannot read {path}: {exc}") from None
    fmt, delimiter = detect_format(path.name, head)
    report.format = fmt
    if fmt == "parquet":
        return _parquet_rows(path, options, now_ms)
    if fmt == "jsonl":
        return _jsonl_rows(path, options, now_ms)
    return _table_rows(path, delimiter, options, now_ms)


def _jsonl_rows(path: Path, options: ReadOptions, now_ms: int) -> Iterator[_Row]:
    with _open(path) as stream:
        converter: RowConverter | None = None
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            if options.columns is None:
                yield number, _parse_event(line, options.validator, now_ms)
                continue
            # A foreign dataset as JSON lines: each object is a row of the mapping.
            try:
                obj = msgspec.json.decode(line)
            except msgspec.DecodeError as exc:
                yield number, f"malformed JSON: {exc}"
                continue
            if not isinstance(obj, dict):
                yield number, "expected a JSON object"
                continue
            if converter is None:  # the first object's keys stand for the header
                converter = RowConverter(options.columns, options, obj.keys(), path, now_ms)
            yield number, converter.convert(obj)


def _table_rows(path: Path, delimiter: str, options: ReadOptions, now_ms: int) -> Iterator[_Row]:
    # Bytes that are not UTF-8 become U+FFFD rather than stopping the read: the decoder
    # works on blocks, so the row to blame is unknown.
    with (
        _open(path) as raw,
        io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="") as text,
    ):
        reader = csv.reader(text, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        header = [name.strip() for name in header]
        mapping = options.columns or ColumnMapping.ours(header)
        converter = RowConverter(mapping, options, header, path, now_ms, options.columns is None)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field over the size limit; the next row is fine
                yield reader.line_num, f"malformed CSV: {exc}"
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                yield reader.line_num, f"expected {len(header)} fields, found {len(row)}"
                continue
            yield reader.line_num, converter.convert(dict(zip(header, row, strict=True)))


def _parquet_rows(path: Path, options: ReadOptions, now_ms: int) -> Iterator[_Row]:
    import pyarrow.parquet as pq  # type: ignore[import-untyped]  # heavy: only for Parquet

    table = pq.ParquetFile(path)
    header = list(table.schema_arrow.names)
    mapping = options.columns
    converter = RowConverter(mapping, options, header, path, now_ms) if mapping else None
    if converter is None and "value" not in header:
        raise MissingColumnError(
            f"column 'value' is not in {path} (columns: {', '.join(header)}); "
            "is it a `streamrec record` file? otherwise give --columns"
        )
    number = 0
    for batch in table.iter_batches(batch_size=10_000):
        for row in batch.to_pylist():
            number += 1
            if converter is not None:
                yield number, converter.convert(row)
            elif row["value"] is None:
                yield number, "null value (a tombstone)"
            else:
                yield number, _parse_event(row["value"].encode(), options.validator, now_ms)


def _parse_event(line: bytes, validator: EventValidator, now_ms: int) -> Event | str:
    try:
        return parse_line(line, validator, now_ms)
    except InvalidEventError as exc:
        return str(exc)


# ---------------------------------------------------------------- rejections, order, duplicates

_FUTURE = re.compile(r"^ts -?\d+ is -?\d+ ms in the future")
_LONG = re.compile(r"^(line|payload) of \d+ bytes exceeds")
_INDEX = re.compile(r"\[\d+\]")


def reason_key(message: str) -> str:
    """A rejection message without the row's own numbers, so that alike rows count together.

    Examples:
        >>> reason_key("ts 9000 is 8000 ms in the future (limit 1000 ms) - at `$.ts`")
        'ts too far in the future - at `$.ts`'
        >>> reason_key("score is not finite - at `$.slots[3].score`")
        'score is not finite - at `$.slots[*].score`'
    """
    if _FUTURE.match(message):
        return "ts too far in the future - at `$.ts`"
    if _LONG.match(message):
        return "line too long"
    return _INDEX.sub("[*]", message)


def _checked(
    rows: Iterator[_Row], path: Path, options: ReadOptions, report: ReadReport
) -> Iterator[tuple[int, Event]]:
    """Valid events with their line; rejections counted, or raised when strict."""
    number = 0
    while True:
        try:
            number, outcome = next(rows)
        except StopIteration:
            return
        except (OSError, EOFError, zlib.error) as exc:  # a truncated or corrupt file
            raise UnreadableFileError(f"{path.name} after line {number}: {exc}") from None
        report.rows += 1
        if isinstance(outcome, str):
            _reject(outcome, number, path, options, report)
        else:
            yield number, outcome


def _reject(reason: str, number: int, path: Path, options: ReadOptions, report: ReadReport) -> None:
    if options.strict:
        raise InvalidEventError(f"{path.name} line {number}: {reason}")
    report.rejected[reason_key(reason)] += 1


def _dedup_key(event: Event) -> str | None:
    # Item records are versions of one item (the last one wins), so a repeat is harmless.
    if isinstance(event, Interaction):
        return "e:" + event.event_id
    if isinstance(event, Impression):
        return "r:" + event.request_id
    return None


def _ordered(
    rows: Iterator[tuple[int, Event]], options: ReadOptions, report: ReadReport
) -> Iterator[Event]:
    seen: set[str] = set()
    latest: int | None = None
    pending: list[Event] = []
    path = Path(report.path)
    for number, event in rows:
        key = _dedup_key(event)
        if key is not None:
            if key in seen:
                report.duplicates += 1
                continue
            seen.add(key)
        if latest is not None and event.ts < latest:
            report.sorted_input = False
            if options.assume_sorted:
                _reject(OUT_OF_ORDER, number, path, options, report)
                continue
        latest = event.ts if latest is None else max(latest, event.ts)
        if options.assume_sorted:
            yield _emitted(event, report)
        else:
            pending.append(event)
    pending.sort(key=_event_ts)  # stable: ties keep file order
    for event in pending:
        yield _emitted(event, report)


def _event_ts(event: Event) -> int:
    return event.ts


def _emitted(event: Event, report: ReadReport) -> Event:
    report.events += 1
    if report.first_ts is None:
        report.first_ts = event.ts
    report.last_ts = event.ts
    return event
