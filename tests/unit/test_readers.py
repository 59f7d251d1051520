"""Reading recorded streams and datasets: formats, mappings, bad rows, order, duplicates."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from features.errors import InvalidEventError
from streams.data.readers import (
    OUT_OF_ORDER,
    ColumnMapping,
    ColumnMappingError,
    MissingColumnError,
    ReadOptions,
    ReadReport,
    UnreadableFileError,
    read_events,
)
from streams.schema import Event, EventValidator, Impression, Interaction, Item, encode

NOW = 1_800_000_000_000
VALIDATOR = EventValidator(embedding_dim=2, max_payload_bytes=4096, max_future_ms=60_000)
RETAIL = ColumnMapping.parse("user=visitorid,item=itemid,ts=timestamp,type=event")


def options(**kw: object) -> ReadOptions:
    return ReadOptions(validator=VALIDATOR, now_ms=NOW, **kw)  # type: ignore[arg-type]


def read(path: Path, **kw: object) -> tuple[list[Event], ReadReport]:
    report = ReadReport()
    return list(read_events(path, options(**kw), report)), report


def read_clicks(path: Path, **kw: object) -> tuple[list[Interaction], ReadReport]:
    """Like read, for files of interactions only."""
    events, report = read(path, **kw)
    assert all(isinstance(e, Interaction) for e in events)
    return [e for e in events if isinstance(e, Interaction)], report


def click(event_id: str, ts: int, user: str = "u1", item: str = "i1") -> Interaction:
    return Interaction(event_id=event_id, user_id=user, item_id=item, type="click", ts=ts)


def jsonl(*events: Event | bytes) -> bytes:
    return b"".join((e if isinstance(e, bytes) else encode(e)) + b"\n" for e in events)


def write(tmp_path: Path, name: str, content: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


MIXED: list[Event] = [
    click("e2", 2_000),
    Item(item_id="i1", ts=1_000, category="news", embedding=[0.5, 0.5]),
    Impression(request_id="r1", user_id="u1", ts=1_500, policy="ts", slots=[]),
    click("e3", 3_000),
]


def test_jsonl_of_our_schema_yields_every_kind_in_event_time_order(tmp_path: Path) -> None:
    events, report = read(write(tmp_path, "log.jsonl", jsonl(*MIXED)))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Item", "Impression", "Interaction", "Interaction"]
    assert [e.ts for e in events] == [1_000, 1_500, 2_000, 3_000]
    assert events[0] == MIXED[1]  # nothing lost on the way
    assert (report.format, report.rows, report.events) == ("jsonl", 4, 4)
    assert (report.first_ts, report.last_ts, report.sorted_input) == (1_000, 3_000, False)


def test_gzip_is_told_by_its_bytes_whatever_the_name(tmp_path: Path) -> None:
    packed = gzip.compress(jsonl(*MIXED))
    by_name, _ = read(write(tmp_path, "log.jsonl.gz", packed))
    misnamed, report = read(write(tmp_path, "log.jsonl", packed))
    assert len(by_name) == len(misnamed) == 4 and report.format == "jsonl"


def test_a_csv_maps_columns_and_retailrocket_event_names(tmp_path: Path) -> None:
    csv = (
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221332117,257597,view,355908,\n"
        "1433221332200,257597,addtocart,355908,\n"
        "1433221332300,257597,transaction,355908,4000\n"
    )
    events, report = read_clicks(write(tmp_path, "events.csv", csv), columns=RETAIL)
    assert [(e.user_id, e.item_id, e.type, e.ts) for e in events] == [
        ("257597", "355908", "view", 1433221332117),
        ("257597", "355908", "add_to_cart", 1433221332200),
        ("257597", "355908", "purchase", 1433221332300),
    ]
    assert report.format == "csv" and report.rejected == {}


def test_tsv_by_extension_and_an_unknown_delimiter_by_sniffing(tmp_path: Path) -> None:
    mapping = ColumnMapping.parse("user=UserId,item=ItemId,ts=Time,session=SessionId")
    tsv = "UserId\tItemId\tTime\tSessionId\nu1\ti1\t1000\ts1\nu2\ti2\t2000\ts2\n"
    semi = tsv.replace("\t", ";")
    for name, content, fmt in (("a.tsv", tsv, "tsv"), ("a.dat", semi, "csv")):
        events, report = read_clicks(write(tmp_path, name, content), columns=mapping)
        assert report.format == fmt
        assert [(e.user_id, e.session_id) for e in events] == [("u1", "s1"), ("u2", "s2")]


def test_a_csv_with_our_own_column_names_needs_no_mapping(tmp_path: Path) -> None:
    csv = "user_id,item_id,ts,type,session_id\nu1,i1,5,like,s9\n"
    (event,), _ = read_clicks(write(tmp_path, "ours.csv", csv))
    assert (event.type, event.session_id, event.ts) == ("like", "s9", 5)


@pytest.mark.parametrize(
    ("unit", "value", "ts"),
    [
        ("s", "1433221332", 1_433_221_332_000),
        ("s", "1433221332.5", 1_433_221_332_500),
        ("ms", "1433221332117", 1_433_221_332_117),
        ("ms", "2014-04-07T10:51:09.277Z", 1_396_867_869_277),  # YooChoose's clicks
        ("s", "2014-04-07 10:51:09", 1_396_867_869_000),  # no zone: UTC
    ],
)
def test_ts_units_and_iso_dates(tmp_path: Path, unit: str, value: str, ts: int) -> None:
    path = write(tmp_path, "t.csv", f"u,i,t\nu1,i1,{value}\n")
    (event,), _ = read(path, columns=ColumnMapping.parse("user=u,item=i,ts=t"), ts_unit=unit)
    assert event.ts == ts


def test_rating_at_or_above_the_threshold_is_a_like_below_a_view(tmp_path: Path) -> None:
    csv = "UserId,MovieId,Rating,Time\nu1,m1,4.0,1\nu1,m2,3.5,2\nu1,m3,5,3\n"
    mapping = ColumnMapping.parse("user=UserId,item=MovieId,ts=Time,rating=Rating")
    events, _ = read_clicks(write(tmp_path, "r.csv", csv), columns=mapping, type_from_rating=4.0)
    assert [(e.item_id, e.type) for e in events] == [("m1", "like"), ("m2", "view"), ("m3", "like")]
    assert isinstance(events[1], Interaction) and events[1].context == {"rating": 3.5}
    # Without a type column or a threshold every row has the default type.
    plain, _ = read(write(tmp_path, "r.csv", csv), columns=mapping)
    assert {e.type for e in plain if isinstance(e, Interaction)} == {"click"}


def test_type_from_rating_without_a_rating_column_is_a_mapping_error(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "u,i,t\nu1,i1,1\n")
    mapping = ColumnMapping.parse("user=u,item=i,ts=t")
    with pytest.raises(ColumnMappingError, match="needs a rating= column"):
        read(path, columns=mapping, type_from_rating=4.0)


BAD_CSV = (
    "visitorid,itemid,timestamp,event\n"
    "u1,i1,1000,view\n"
    ",i1,1001,view\n"  # line 3: no user
    "u1,i1,soon,view\n"  # line 4: bad ts
    "u1,i1,1002,poke\n"  # line 5: unknown type
    "u1,i1,1003\n"  # line 6: a field short
    f"u1,i1,{NOW + 3_600_000},view\n"  # line 7: an hour in the future
    f"u2,i2,{NOW + 7_200_000},view\n"  # line 8: two hours in the future, same reason
    "u1,i2,1004,click\n"
)


def test_malformed_rows_are_skipped_and_counted_by_reason(tmp_path: Path) -> None:
    events, report = read(write(tmp_path, "bad.csv", BAD_CSV), columns=RETAIL)
    assert [e.ts for e in events] == [1000, 1004]
    assert report.rejected == {
        "empty user in column visitorid": 1,
        "bad ts in column timestamp": 1,
        "unknown type 'poke' in column event": 1,
        "expected 4 fields, found 3": 1,
        "ts too far in the future - at `$.ts`": 2,
    }
    assert report.as_dict()["rejected"] == 6 and report.rows == 8


def test_malformed_json_lines_are_counted_by_reason(tmp_path: Path) -> None:
    lines = jsonl(
        click("e1", 1),
        b"{not json",
        b'{"event_id":"e2","user_id":"u","item_id":"i","type":"poke","ts":2}',
        b"[1, 2]",
        b"",  # blank lines are not rows
    )
    events, report = read(write(tmp_path, "log.jsonl", lines))
    assert len(events) == 1 and report.rows == 4
    assert report.rejected["Invalid enum value 'poke' - at `$.type`"] == 1
    assert sum(report.rejected.values()) == 3


def test_strict_stops_at_the_first_bad_row_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", BAD_CSV)
    with pytest.raises(
        InvalidEventError, match=r"^bad.csv line 3: empty user in column visitorid$"
    ):
        read(path, columns=RETAIL, strict=True)


def test_a_missing_mapped_column_is_one_line_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", "visitorid,itemid,timestamp\nu1,i1,1\n")
    with pytest.raises(MissingColumnError) as info:
        read(path, columns=RETAIL)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("column 'event' (type=) is not in events.csv")
    assert "itemid, timestamp, visitorid" in message
    # Our own names are the default; the message then says how to map others.
    with pytest.raises(MissingColumnError, match="'user_id'.*--columns"):
        read(path)


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("user=u,item=i", "lacks ts="),
        ("user=u,item=i,ts=t,colour=c", "unknown field 'colour'"),
        ("user=u,item=i,ts=t,user=v", "user= is given twice"),
        ("user=u,item,ts=t", "expected field=Column, got 'item'"),
        ("user=u,item=,ts=t", "expected field=Column"),
    ],
)
def test_column_mapping_errors_are_clear(spec: str, error: str) -> None:
    with pytest.raises(ColumnMappingError, match=error):
        ColumnMapping.parse(spec)


@pytest.mark.parametrize(
    ("name", "content"),
    [("e.csv", b""), ("e.csv", b"visitorid,itemid,timestamp,event\n"), ("e.jsonl", b"\n\n")],
)
def test_an_empty_file_gives_no_events_and_says_so(
    tmp_path: Path, name: str, content: bytes
) -> None:
    events, report = read(write(tmp_path, name, content), columns=RETAIL)
    assert events == [] and report.events == 0 and report.first_ts is None
    assert "the file holds no rows" in report.as_dict()["notes"]


UNSORTED = jsonl(click("a", 3_000), click("b", 1_000), click("c", 2_000), click("d", 1_000))


def test_unsorted_input_is_sorted_stably_and_reported(tmp_path: Path) -> None:
    events, report = read(write(tmp_path, "u.jsonl", UNSORTED))
    assert [e.event_id for e in events if isinstance(e, Interaction)] == ["b", "d", "c", "a"]
    assert report.sorted_input is False
    assert "sorted in memory" in report.as_dict()["notes"][0]
    _, sorted_report = read(write(tmp_path, "s.jsonl", jsonl(*(e for e in events))))
    assert sorted_report.sorted_input is True and sorted_report.as_dict()["notes"] == []


def test_assume_sorted_streams_and_rejects_rows_out_of_order(tmp_path: Path) -> None:
    path = write(tmp_path, "u.jsonl", UNSORTED)
    events, report = read(path, assume_sorted=True)
    assert [e.ts for e in events] == [3_000]
    assert report.rejected == {OUT_OF_ORDER: 3} and report.sorted_input is False
    with pytest.raises(InvalidEventError, match="u.jsonl line 2: out of order"):
        read(path, assume_sorted=True, strict=True)
    # Streamed: the first event comes out before the file is read to its end.
    stream = read_events(path, options(assume_sorted=True), ReadReport())
    assert next(stream).ts == 3_000


def test_duplicate_event_ids_are_dropped_keeping_the_first(tmp_path: Path) -> None:
    first = click("dup", 1_000, item="first")
    lines = jsonl(first, click("other", 1_500), click("dup", 500, item="second"))
    events, report = read(write(tmp_path, "d.jsonl", lines))
    assert [(e.event_id, e.item_id) for e in events if isinstance(e, Interaction)] == [
        ("dup", "first"),
        ("other", "i1"),
    ]
    assert report.duplicates == 1 and "1 duplicate" in report.as_dict()["notes"][0]


def test_csv_rows_get_deterministic_ids_and_verbatim_repeats_are_duplicates(
    tmp_path: Path,
) -> None:
    csv = "visitorid,itemid,timestamp,event\nu1,i1,1,view\nu1,i1,1,view\nu1,i1,1,addtocart\n"
    path = write(tmp_path, "r.csv", csv)
    events, report = read_clicks(path, columns=RETAIL)
    again, _ = read_clicks(path, columns=RETAIL)
    assert report.duplicates == 1 and len(events) == 2
    assert [e.event_id for e in events] == [e.event_id for e in again]
    assert len({e.event_id for e in events}) == 2


def test_a_truncated_gzip_is_one_error_not_a_crash(tmp_path: Path) -> None:
    packed = gzip.compress(jsonl(*(click(f"e{n}", n) for n in range(2000))))
    path = write(tmp_path, "cut.jsonl.gz", packed[: len(packed) // 2])
    with pytest.raises(UnreadableFileError, match="cut.jsonl.gz"):
        read(path)


def test_a_parquet_recording_reads_its_value_column(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    from streams.data.recording import ParquetWriter
    from streams.io.transport import RawMessage

    path = tmp_path / "rec.parquet"
    writer = ParquetWriter(path)
    for offset, event in enumerate(MIXED):
        writer.write(RawMessage("t", 0, offset, b"k", encode(event), 1_000 + offset))
    writer.write(RawMessage("t", 0, 9, b"k", None, 2_000))  # a tombstone
    writer.close()
    events, report = read(path)
    assert sorted(events, key=lambda e: e.ts) == sorted(MIXED, key=lambda e: e.ts)
    assert report.format == "parquet" and report.rejected == {"null value (a tombstone)": 1}


def test_json_lines_of_a_foreign_dataset_go_through_the_mapping(tmp_path: Path) -> None:
    lines = b"".join(
        orjson.dumps({"visitorid": 7, "itemid": 9, "timestamp": ts, "event": "view"}) + b"\n"
        for ts in (2, 1)
    )
    events, _ = read_clicks(write(tmp_path, "foreign.jsonl", lines), columns=RETAIL)
    assert [(e.user_id, e.ts) for e in events] == [("7", 1), ("7", 2)]
