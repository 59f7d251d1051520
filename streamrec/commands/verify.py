"""`streamrec verify`: is the live state what the log says it should be?

It reads the store's offset table, reads the worker's input topics from Kafka up to those
offsets, applies them in memory through the same processors (:mod:`streams.data.verify`), and
diffs every key family against Redis. Run it when the workers are caught up and producers
are quiet: a store that moves while it reads is reported, not diffed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from features.keys import Keys
from features.store import Store
from features.stores.memory_store import InMemoryStore
from streamrec.cli_common import ConfigOption, console, setup_command
from streamrec.settings import Settings
from streamrec.wiring import build_worker, live_store
from streams.data.recording import RecordRange, record_topic
from streams.data.verify import RecordedSource, StateDiff, diff_states, live_order, readable_state
from streams.io.transport import RawMessage, TopicPartition


class _Collect:
    """A recording writer that keeps the messages in memory."""

    def __init__(self) -> None:
        self.messages: list[RawMessage] = []

    def write(self, msg: RawMessage) -> str | None:
        """Keep ``msg``."""
        self.messages.append(msg)
        return None

    def close(self) -> None:
        """Nothing to flush."""


class _DropDeadLetters:
    """The recomputation's rejects: counted, not produced (the live worker sent them)."""

    def __init__(self) -> None:
        self.count = 0

    def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Mapping[str, bytes]
    ) -> None:
        """Count one reject."""
        self.count += 1

    def flush(self, timeout_s: float = 10.0) -> int:
        """Nothing is queued."""
        return 0


def applied_offsets(store: Store, keys: Keys, topics: list[str]) -> dict[TopicPartition, int]:
    """The store's offset table: last applied offset per partition."""
    tables = store.hgetall_many([keys.applied_offsets(t) for t in topics])
    return {
        (t, int(p)): int(o)
        for t, table in zip(topics, tables, strict=True)
        for p, o in table.items()
    }


def read_log(
    settings: Settings, applied: Mapping[TopicPartition, int]
) -> tuple[list[RawMessage], list[str]]:
    """Every message the store applied, from Kafka; and the partitions whose log no longer
    starts at offset 0 (retention or compaction removed part of what was applied)."""
    messages: list[RawMessage] = []
    trimmed: list[str] = []
    for topic in settings.topics.worker_inputs:
        sink = _Collect()
        report = record_topic(
            settings.kafka_bootstrap,
            settings.kafka_config,
            topic,
            Path(f"memory:{topic}"),
            RecordRange(),
            fmt="jsonl",
            writer=sink,
        )
        for p, plan in report.partitions.items():
            if plan.start > 0 and (topic, p) in applied:
                trimmed.append(f"{topic}/{p} from {plan.start}")
        messages += [
            m for m in sink.messages if m.offset <= applied.get((m.topic, m.partition), -1)
        ]
    return messages, trimmed


def recompute(settings: Settings, messages: list[RawMessage], now_s: float) -> Store:
    """The state ``messages`` give when applied in a live worker's order, in memory."""
    store = InMemoryStore()
    source = RecordedSource(live_order(messages, settings.topics.items))
    worker = build_worker(settings, source, store, _DropDeadLetters(), "verify")
    worker.clock = lambda: now_s
    while source.position < len(source.messages):
        worker.run_once()
    return store


def _table(diff: StateDiff) -> Table:
    table = Table("family", "keys", "different", "lost", "doubled", "trimmed", "e.g.")
    for name, fam in diff.families.items():
        table.add_row(
            name,
            str(fam.keys_compared),
            str(fam.keys_different),
            str(fam.lost),
            str(fam.doubled),
            str(fam.trimmed),
            ", ".join(fam.examples[:2]),
        )
    return table


def verify(config: ConfigOption = None) -> None:
    """Recompute the state from the topics in memory and diff it against Redis, per key
    family; exit 1 on a difference beyond the documented trimming."""
    settings = setup_command(config)
    keys = Keys(settings.namespace)
    live = live_store(settings)
    try:
        topics = settings.topics.worker_inputs
        before = applied_offsets(live, keys, topics)
        messages, trimmed = read_log(settings, before)
        now_s = time.time()
        live_state = readable_state(live, keys, settings.features, now_s)
        after = applied_offsets(live, keys, topics)
    finally:
        live.close()
    if after != before:
        console.print(
            "[red]the store moved while verify read it[/red]: stop the producers and let the "
            "workers catch up, then run verify again"
        )
        raise typer.Exit(2)
    truth = readable_state(recompute(settings, messages, now_s), keys, settings.features, now_s)
    diff = diff_states(truth, live_state, keys.prefix, settings.features.covisitation_neighbours)
    console.print(_table(diff))
    totals: dict[str, Any] = diff.totals() | {"messages": len(messages)}
    if trimmed:
        totals["log_trimmed"] = trimmed
        console.print(
            "[yellow]the log no longer holds the start of[/yellow] "
            + ", ".join(trimmed)
            + ": the recomputation misses those messages"
        )
    print(json.dumps(totals), flush=True)
    if trimmed:
        raise typer.Exit(2)
    if totals["keys_different"]:
        raise typer.Exit(1)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `verify` to the CLI."""
    app.command("verify")(verify)
