"""Record a range of a Kafka topic to a file: JSONL (optionally gzipped) or Parquet.

JSONL holds the message values, one per line, as they were on the topic: the file replays
with ``streamrec replay`` and ``streamrec produce``, and trains with ``streamrec train``.
Parquet keeps every message's coordinates too: columns ``topic``, ``partition``,
``offset``, ``timestamp`` (the Kafka message time, ms), ``key`` and ``value`` (the raw JSON).

The range is per partition: offsets ``--from-offset`` to ``--to-offset`` (both included),
or message times ``--since`` (included) to ``--until`` (excluded), found with the broker's
time index (``offsets_for_times``). Message times are when the messages were produced,
not the events' own ``ts``. Recording stops at the end of the range or at the end the topic
had when recording began, whichever comes first; later messages are left for the next run.
"""

from __future__ import annotations

import gzip
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, Protocol, TypeAlias, cast

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from features.errors import StreamrecError, TransportUnavailableError
from streams.io.kafka import client_config
from streams.io.transport import RawMessage

RecordFormat: TypeAlias = Literal["jsonl", "jsonl.gz", "parquet"]
PARQUET_COLUMNS = ("topic", "partition", "offset", "timestamp", "key", "value")


class RecordingError(StreamrecError):
    """The topic or the range cannot be recorded as asked."""


def parse_time_ms(text: str) -> int:
    """Milliseconds since the epoch from digits (ms) or an ISO-8601 time (UTC if no zone).

    Examples:
        >>> parse_time_ms("1700000000000")
        1700000000000
        >>> parse_time_ms("2023-11-14T22:13:20Z"), parse_time_ms("2023-11-14 22:13:20")
        (1700000000000, 1700000000000)
        >>> parse_time_ms("yesterday")
        Traceback (most recent call last):
        ...
        ValueError: expected milliseconds or an ISO-8601 time, got 'yesterday'
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected milliseconds or an ISO-8601 time, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return round(when.timestamp() * 1000)


def format_for(path: Path) -> RecordFormat:
    """The file format its name asks for.

    Examples:
        >>> format_for(Path("log.jsonl.gz")), format_for(Path("log.parquet"))
        ('jsonl.gz', 'parquet')
    """
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    return "jsonl.gz" if name.endswith(".gz") else "jsonl"


@dataclass(frozen=True, slots=True)
class RecordRange:
    """Which messages of each partition to record; unset bounds are the topic's ends."""

    from_offset: int | None = None
    to_offset: int | None = None  # included
    since_ms: int | None = None
    until_ms: int | None = None  # excluded
    partitions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.from_offset is not None and self.since_ms is not None:
            raise RecordingError("give --from-offset or --since, not both")
        if self.to_offset is not None and self.until_ms is not None:
            raise RecordingError("give --to-offset or --until, not both")
        if (
            self.from_offset is not None
            and self.to_offset is not None
            and self.to_offset < self.from_offset
        ):
            raise RecordingError("--to-offset is before --from-offset")
        if self.since_ms is not None and self.until_ms is not None:
            if self.until_ms <= self.since_ms:
                raise RecordingError("--until is not after --since")


@dataclass(slots=True)
class PartitionPlan:
    """Offsets ``start`` (included) to ``end`` (excluded) of one partition."""

    start: int
    end: int
    bound: Literal["range", "topic end"]
    first: int | None = None
    last: int | None = None
    count: int = 0


def plan_partition(
    low: int, high: int, start: int | None, end: int | None
) -> tuple[int, int, Literal["range", "topic end"]]:
    """Clamp a wanted [start, end) to the partition's [low, high).

    ``start``/``end`` are offsets found for the range (None: unbounded); the result's third
    value says whether the range or the topic's current end stops the recording.

    Examples:
        >>> plan_partition(low=10, high=100, start=None, end=None)
        (10, 100, 'topic end')
        >>> plan_partition(low=10, high=100, start=5, end=51)
        (10, 51, 'range')
        >>> plan_partition(low=10, high=100, start=50, end=500)
        (50, 100, 'topic end')
    """
    begin = low if start is None else min(max(start, low), high)
    if end is not None and end <= high:
        return begin, max(begin, end), "range"
    return begin, high, "topic end"


class MessageWriter(Protocol):
    """Writes recorded messages to a file."""

    def write(self, msg: RawMessage) -> str | None:
        """Write one message; return why it was skipped, if it was."""
        ...

    def close(self) -> None:
        """Finish the file."""
        ...


class JsonlWriter:
    """Message values, one per line; gzipped when asked."""

    def __init__(self, path: Path, gzipped: bool) -> None:
        raw: IO[bytes] = path.open("wb")
        self._out = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="wb")) if gzipped else raw
        self._raw = raw

    def write(self, msg: RawMessage) -> str | None:
        """Write one value; return why it was skipped, if it was."""
        value = msg.value
        if value is None:
            return "null value (a tombstone)"
        if b"\n" in value or b"\r" in value:
            # A line break inside a value would split it over two lines: re-encode compactly.
            try:
                value = msgspec.json.encode(msgspec.json.decode(value))
            except msgspec.DecodeError:
                return "not JSON, with a line break"
        self._out.write(value + b"\n")
        return None

    def close(self) -> None:
        self._out.close()
        self._raw.close()


class ParquetWriter:
    """All six columns, in row groups of ``rows_per_group`` messages."""

    def __init__(self, path: Path, rows_per_group: int = 50_000) -> None:
        import pyarrow as pa  # type: ignore[import-untyped]  # heavy: only for Parquet
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        self._pa = pa
        self.schema = pa.schema(
            [
                ("topic", pa.string()),
                ("partition", pa.int32()),
                ("offset", pa.int64()),
                ("timestamp", pa.int64()),
                ("key", pa.string()),
                ("value", pa.string()),
            ]
        )
        self._writer = pq.ParquetWriter(str(path), self.schema)
        self._rows: dict[str, list[Any]] = {name: [] for name in PARQUET_COLUMNS}
        self.rows_per_group = rows_per_group

    def write(self, msg: RawMessage) -> str | None:
        """Buffer one message; a full buffer becomes a row group."""
        key, value = _text(msg.key), _text(msg.value)
        row = (msg.topic, msg.partition, msg.offset, msg.timestamp_ms, key, value)
        for name, cell in zip(PARQUET_COLUMNS, row, strict=True):
            self._rows[name].append(cell)
        if len(self._rows["offset"]) >= self.rows_per_group:
            self._flush()
        return None

    def _flush(self) -> None:
        if self._rows["offset"]:
            self._writer.write_table(self._pa.table(self._rows, schema=self.schema))
            self._rows = {name: [] for name in PARQUET_COLUMNS}

    def close(self) -> None:
        self._flush()
        self._writer.close()


def _text(raw: bytes | None) -> str | None:
    # Our keys and values are UTF-8; anything else is kept visibly rather than dropped.
    return None if raw is None else raw.decode("utf-8", errors="backslashreplace")


def open_writer(path: Path, fmt: RecordFormat | None = None) -> MessageWriter:
    """A writer for ``fmt`` (by default, the one ``path``'s name asks for)."""
    fmt = fmt or format_for(path)
    if fmt == "parquet":
        return ParquetWriter(path)
    return JsonlWriter(path, gzipped=fmt == "jsonl.gz")


@dataclass(slots=True)
class RecordReport:
    """What was recorded: counts, per-partition offsets, message-time span, why it stopped."""

    topic: str
    path: str
    format: str
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    partitions: dict[int, PartitionPlan] = field(default_factory=dict)
    first_timestamp: int | None = None
    last_timestamp: int | None = None
    stopped: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "topic": self.topic,
            "path": self.path,
            "format": self.format,
            "written": self.written,
            "skipped": sum(self.skipped.values()),
            "reasons": self.skipped,
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
            "partitions": {
                str(p): {
                    "start": plan.start,
                    "end": plan.end,
                    "bound": plan.bound,
                    "first_offset": plan.first,
                    "last_offset": plan.last,
                    "messages": plan.count,
                }
                for p, plan in sorted(self.partitions.items())
            },
            "stopped": self.stopped,
        }


def record_topic(
    bootstrap: str,
    extra: Mapping[str, str],
    topic: str,
    path: Path,
    wanted: RecordRange,
    *,
    fmt: RecordFormat | None = None,
    idle_timeout_s: float = 10.0,
    stop: threading.Event | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    writer: MessageWriter | None = None,
) -> RecordReport:
    """Copy ``wanted`` of ``topic`` into ``path`` (or into ``writer``, which ``path`` then
    only names); see the module for the range's meaning.

    ``on_progress(written, total)`` is called now and then; ``total`` is the number of
    offsets in the plan (compaction and transaction markers can make it an overestimate).
    """
    fmt = fmt or format_for(path)
    consumer = Consumer(
        client_config(bootstrap, extra)
        | {
            "group.id": f"streamrec-record-{uuid.uuid4().hex}",  # required, never joined
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    report = RecordReport(topic=topic, path=str(path), format=fmt)
    try:
        report.partitions = _plan(consumer, topic, wanted)
        writer = writer or open_writer(path, fmt)
        try:
            _copy(consumer, topic, writer, report, idle_timeout_s, stop, on_progress)
        finally:
            writer.close()
    finally:
        consumer.close()
    return report


def _plan(consumer: Consumer, topic: str, wanted: RecordRange) -> dict[int, PartitionPlan]:
    try:
        metadata = consumer.list_topics(topic, timeout=10)
    except KafkaException as exc:
        raise TransportUnavailableError(f"kafka unreachable: {exc}") from None
    info = metadata.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise RecordingError(f"topic {topic!r} does not exist")
    partitions = sorted(info.partitions)
    if wanted.partitions is not None:
        missing = sorted(set(wanted.partitions) - set(partitions))
        if missing:
            raise RecordingError(f"topic {topic!r} has no partition {missing[0]}")
        partitions = sorted(wanted.partitions)
    starts = _offsets_at(consumer, topic, partitions, wanted.since_ms)
    ends = _offsets_at(consumer, topic, partitions, wanted.until_ms)
    plans: dict[int, PartitionPlan] = {}
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        start = wanted.from_offset if wanted.from_offset is not None else starts.get(p)
        end = wanted.to_offset + 1 if wanted.to_offset is not None else ends.get(p)
        begin, stop_at, bound = plan_partition(low, high, start, end)
        plans[p] = PartitionPlan(begin, stop_at, bound)
    return plans


def _offsets_at(
    consumer: Consumer, topic: str, partitions: list[int], ts_ms: int | None
) -> dict[int, int | None]:
    """First offset of each partition whose message time is >= ts (None: past the end)."""
    if ts_ms is None:
        return {}
    found = consumer.offsets_for_times(
        [TopicPartition(topic, p, ts_ms) for p in partitions], timeout=10
    )
    # -1: no message that late, so the range starts (or ends) at the partition's end.
    return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in found}


def _copy(
    consumer: Consumer,
    topic: str,
    writer: MessageWriter,
    report: RecordReport,
    idle_timeout_s: float,
    stop: threading.Event | None,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    plans = report.partitions
    open_parts = {p for p, plan in plans.items() if plan.start < plan.end}
    total = sum(plan.end - plan.start for plan in plans.values())
    if open_parts:
        consumer.assign([TopicPartition(topic, p, plans[p].start) for p in sorted(open_parts)])
    last_message = time.monotonic()
    by_range = all(plan.bound == "range" for plan in plans.values())
    report.stopped = "end of range" if by_range else "end of topic"
    while open_parts:
        if stop is not None and stop.is_set():
            report.stopped = "interrupted"
            return
        batch = consumer.consume(num_messages=1000, timeout=0.5)
        if not batch and time.monotonic() - last_message > idle_timeout_s:
            report.stopped = f"no message for {idle_timeout_s:g} s"
            return
        for msg in batch:
            last_message = time.monotonic()
            p, offset = msg.partition(), msg.offset()
            if p not in open_parts or p is None or offset is None:
                continue
            plan = plans[p]
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    raise RecordingError(f"consume error on {topic}[{p}]: {err.str()}")
                # The partition's current end: compaction or transaction markers can leave
                # the last planned offsets without a message to see.
                if offset >= plan.end:
                    open_parts.discard(p)
                continue
            if offset < plan.end:
                _write(writer, report, plan, _raw(msg, topic, p, offset))
            if offset >= plan.end - 1:
                open_parts.discard(p)
        if on_progress is not None:
            on_progress(report.written, total)


def _raw(msg: Message, topic: str, partition: int, offset: int) -> RawMessage:
    key, value = msg.key(), msg.value()
    return RawMessage(
        topic,
        partition,
        offset,
        key.encode() if isinstance(key, str) else key,
        value.encode() if isinstance(value, str) else value,
        msg.timestamp()[1],
    )


def _write(
    writer: MessageWriter, report: RecordReport, plan: PartitionPlan, msg: RawMessage
) -> None:
    skipped = writer.write(msg)
    if skipped is not None:
        report.skipped[skipped] = report.skipped.get(skipped, 0) + 1
        return
    report.written += 1
    plan.count += 1
    plan.first = msg.offset if plan.first is None else plan.first
    plan.last = msg.offset
    ts = msg.timestamp_ms
    if report.first_timestamp is None or ts < report.first_timestamp:
        report.first_timestamp = ts
    if report.last_timestamp is None or ts > report.last_timestamp:
        report.last_timestamp = ts
