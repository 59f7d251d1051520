"""replay a CSV into Kafka, record the topic back to JSONL and Parquet: the same events, and
the offset and time ranges a user asks for. Real broker, topics of this test alone."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from streams.data.readers import ColumnMapping, ReadOptions, ReadReport, read_events
from streams.io.kafka import create_topics
from streams.schema import Event, Interaction
from streams.settings import TopicSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

COLUMNS = "user=UserId,item=ItemId,ts=Time,session=SessionId,type=Event"
BASE_MS = 1_700_000_000_000
# The CLI as `streamrec` runs it, whether or not cli.py registers the commands yet.
CLI = (
    "import typer; from streamrec.commands.replay import register; "
    "app = typer.Typer(); register(app, typer.Typer()); app()"
)


def cli(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    """Run a command; return its exit code, its last stdout line as JSON, and its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", CLI, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=45,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr
    return done.returncode, orjson.loads(lines[-1]), done.stderr


@pytest.fixture
def env(kafka_bootstrap: str) -> Iterator[dict[str, str]]:
    run = f"rr-{uuid.uuid4().hex[:8]}"
    topics = TopicSettings(
        interactions=f"{run}.interactions",
        items=f"{run}.items",
        impressions=f"{run}.impressions",
        dead_letter=f"{run}.dead-letter",
        partitions=2,
    )
    create_topics(kafka_bootstrap, topics, {})
    yield {
        "STREAMREC_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "STREAMREC_TOPICS__INTERACTIONS": topics.interactions,
        "STREAMREC_TOPICS__ITEMS": topics.items,
        "STREAMREC_TOPICS__IMPRESSIONS": topics.impressions,
        "STREAMREC_TOPICS__DEAD_LETTER": topics.dead_letter,
    }
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    names = [topics.interactions, topics.items, topics.impressions, topics.dead_letter]
    for future in admin.delete_topics(names).values():
        try:
            future.result(timeout=30)
        except Exception:  # noqa: BLE001, S110 - best-effort cleanup
            pass


def dataset(tmp_path: Path) -> Path:
    """40 good rows over 2 s of event time, shuffled, plus two bad rows and a repeated one."""
    kinds = ["view", "view", "addtocart", "transaction"]
    rows = [
        f"u{n % 5},i{n % 7},{(BASE_MS + n * 50) / 1000:.3f},s{n % 5},{kinds[n % 4]}"
        for n in range(40)
    ]
    rows = rows[::2] + rows[1::2]  # out of order: the reader sorts
    rows += [",i1,1700000000.5,s0,view", "u1,i1,not-a-time,s1,view", rows[3]]
    path = tmp_path / "sessions.csv"
    path.write_text("UserId,ItemId,Time,SessionId,Event\n" + "\n".join(rows) + "\n")
    return path


def events_of(path: Path, options: ReadOptions | None = None) -> list[Event]:
    return sorted(read_events(path, options, ReadReport()), key=lambda e: (e.ts, str(e)))


def test_replay_then_record_round_trips_with_ranges(env: dict[str, str], tmp_path: Path) -> None:
    source = dataset(tmp_path)
    code, replayed, _ = cli(
        env, "replay", str(source), "--columns", COLUMNS, "--ts-unit", "s", "--speed", "4"
    )
    assert code == 1  # rows were rejected: reported, like `streamrec produce`
    assert (replayed["sent"], replayed["undelivered"], replayed["duplicates"]) == (40, 0, 1)
    assert replayed["rejected"] == 2 and replayed["sorted_input"] is False
    assert (replayed["first_ts"], replayed["last_ts"]) == (BASE_MS, BASE_MS + 39 * 50)
    assert replayed["elapsed_s"] >= 0.45  # 1.95 s of event time at 4x

    expected = events_of(source, ReadOptions(columns=ColumnMapping.parse(COLUMNS), ts_unit="s"))
    assert len(expected) == 40

    # The whole topic to JSONL: the same events come back.
    code, jsonl, err = cli(env, "record", "interactions", str(tmp_path / "all.jsonl"))
    assert code == 0, err
    assert (jsonl["written"], jsonl["stopped"]) == (40, "end of topic")
    assert events_of(tmp_path / "all.jsonl") == expected

    # ... and to Parquet, with every message's coordinates.
    pq = pytest.importorskip("pyarrow.parquet")
    code, _, err = cli(env, "record", "interactions", str(tmp_path / "all.parquet"))
    assert code == 0, err
    table = pq.read_table(tmp_path / "all.parquet")
    assert table.column_names == ["topic", "partition", "offset", "timestamp", "key", "value"]
    rows = table.to_pylist()
    assert events_of(tmp_path / "all.parquet") == expected
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_partition.setdefault(row["partition"], []).append(row)
        assert row["key"] == orjson.loads(row["value"])["user_id"]  # keyed by user
    for part in by_partition.values():
        assert [r["offset"] for r in part] == list(range(len(part)))

    # An offset range of one partition: both ends included.
    busiest = max(by_partition, key=lambda p: len(by_partition[p]))
    only = ["--partition", str(busiest), "--from-offset", "2", "--to-offset", "5"]
    code, ranged, err = cli(env, "record", "interactions", str(tmp_path / "range.parquet"), *only)
    assert code == 0, err
    assert ranged["stopped"] == "end of range"
    got = pq.read_table(tmp_path / "range.parquet").to_pylist()
    assert [(r["partition"], r["offset"]) for r in got] == [(busiest, o) for o in range(2, 6)]

    # A time range, [since, until), by the messages' Kafka timestamps.
    times = sorted(r["timestamp"] for r in rows)
    since, until = times[10], times[30]
    until_iso = datetime.fromtimestamp(until / 1000, tz=UTC).isoformat(timespec="milliseconds")
    window = ["--since", str(since), "--until", until_iso]
    code, timed, err = cli(env, "record", "interactions", str(tmp_path / "time.jsonl.gz"), *window)
    assert code == 0, err
    inside = [r for r in rows if since <= r["timestamp"] < until]
    assert timed["written"] == len(inside) and timed["format"] == "jsonl.gz"
    assert since <= timed["first_timestamp"] and timed["last_timestamp"] < until
    ids = {orjson.loads(r["value"])["event_id"] for r in inside}
    recorded = events_of(tmp_path / "time.jsonl.gz")
    assert {e.event_id for e in recorded if isinstance(e, Interaction)} == ids
