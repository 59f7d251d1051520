"""The synthetic stream: determinism, churn, drift, ground truth, and `streamrec simulate`."""

from __future__ import annotations

import gzip
import hashlib
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest
import typer
from typer.testing import CliRunner

from streamrec.commands import simulate as simulate_command
from streams.data.jsonl import event_kind
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.io.bus import InProcessBus
from streams.schema import EventValidator, Interaction, Item, encode

SMALL = SimulatorConfig(users=200, items=400, embedding_dim=16)
CHANGING = SimulatorConfig(
    users=200,
    items=400,
    embedding_dim=16,
    churn_probability=0.01,
    taste_drift_period_s=60.0,
    category_shift_period_s=30.0,
)


def fingerprint(sim: StreamSimulator, n: int) -> str:
    data = b"".join(encode(e) for e in [*sim.initial_items(0), *sim.events(n, 0)])
    return hashlib.sha256(data).hexdigest()[:16]


def test_a_seed_gives_the_same_stream_with_churn_and_drift_on() -> None:
    a, b = StreamSimulator(CHANGING, seed=5), StreamSimulator(CHANGING, seed=5)
    assert fingerprint(a, 5_000) == fingerprint(b, 5_000)
    assert fingerprint(StreamSimulator(CHANGING, seed=6), 5_000) != fingerprint(
        StreamSimulator(CHANGING, seed=5), 5_000
    )


def test_with_the_new_options_off_the_stream_is_what_it_always_was() -> None:
    # Recorded from the simulator before churn and drift existed: benchmarks and tests that
    # compare runs of one seed across versions rely on it. Item events have since gained the
    # `embedding_learned` field (false in every simulated item), which the recording predates.
    sim = StreamSimulator(SMALL, seed=3)
    data = b"".join(encode(e) for e in [*sim.initial_items(0), *sim.events(2_000, 0)])
    data = data.replace(b',"embedding_learned":false', b"")
    assert hashlib.sha256(data).hexdigest()[:16] == "b79eeddbfa8cf554"


def test_churn_retires_items_as_deletes_and_unavailable_upserts() -> None:
    sim = StreamSimulator(CHANGING, seed=1)
    kinds: Counter[str] = Counter()
    for event in sim.events(20_000, 0):
        if isinstance(event, Item) and (event.op == "delete" or not event.available):
            kinds[event.op] += 1
            assert not sim.is_live(event.item_id) and sim.knows_item(event.item_id)
    assert kinds["delete"] > 50 and kinds["upsert"] > 50
    # Every category keeps something to serve.
    assert {sim.item_category(i) for i in sim.live_item_ids()} == set(sim.categories)


@pytest.mark.parametrize(
    "config",
    [
        replace(CHANGING, burst_probability=0.01, burst_events=200),
        # Fewer items than categories: some categories are empty and borrow any item.
        SimulatorConfig(users=50, items=8, churn_probability=0.05, new_item_probability=0.01),
    ],
)
def test_a_retired_item_is_never_interacted_with_again(config: SimulatorConfig) -> None:
    sim = StreamSimulator(config, seed=2)
    retired: set[str] = set()
    for event in sim.events(20_000, 0):
        if isinstance(event, Item) and (event.op == "delete" or not event.available):
            retired.add(event.item_id)
        elif isinstance(event, Interaction):
            assert event.item_id not in retired
    assert len(retired) > 5
    assert set(sim.live_item_ids()).isdisjoint(retired)


def test_an_unavailable_upsert_keeps_the_items_creation_time() -> None:
    sim = StreamSimulator(SimulatorConfig(users=20, items=50, churn_probability=0.5), seed=2)
    created = {i.item_id: i.created_at for i in sim.initial_items(1_000)}
    gone = [e for e in sim.events(200, 5_000) if isinstance(e, Item) and not e.available]
    assert gone and all(e.created_at == created[e.item_id] for e in gone)


def on_first_favourite(sim: StreamSimulator, events: list[Interaction]) -> float:
    """Share of events in the category each user liked most at the start."""
    return float(
        np.mean(
            [
                sim.item_category(e.item_id)
                == sim.categories[int(sim.taste(e.user_id, ts_ms=0).argmax())]
                for e in events
            ]
        )
    )


@pytest.mark.parametrize("drift_s", [20.0, 0.0])
def test_taste_drift_moves_each_users_taste_and_what_the_stream_shows(drift_s: float) -> None:
    config = SimulatorConfig(
        users=50, items=400, embedding_dim=16, taste_drift_period_s=drift_s, burst_probability=0
    )
    sim = StreamSimulator(config, seed=4)
    events = [e for e in sim.events(8_000, 0) if isinstance(e, Interaction)]  # ~40 s
    early = on_first_favourite(sim, [e for e in events if e.ts < 5_000])
    late = on_first_favourite(sim, [e for e in events if e.ts > 25_000])
    if not drift_s:
        assert abs(early - late) < 0.1
        return
    before, after = sim.taste("u0", ts_ms=0), sim.taste("u0", ts_ms=20_000)
    assert before.argmax() != after.argmax() and after.max() == pytest.approx(1.0)
    assert np.allclose(sim.taste("u0", ts_ms=10_000), (before + after) / 2)
    # What users do follows: once drifted, they have left their first favourite.
    assert early > 0.25 and late < 0.05


def test_drift_share_leaves_other_users_alone() -> None:
    config = SimulatorConfig(users=400, items=100, taste_drift_period_s=10.0, taste_drift_share=0.5)
    sim = StreamSimulator(config, seed=9)
    moved = [not np.allclose(sim.taste(f"u{u}", 0), sim.taste(f"u{u}", 10_000)) for u in range(400)]
    assert 0.4 < np.mean(moved) < 0.6


def test_category_popularity_cycles() -> None:
    config = SimulatorConfig(users=300, items=400, category_shift_period_s=40.0)
    sim = StreamSimulator(config, seed=2)
    mean_taste = [
        np.mean([sim.taste(f"u{u}", ts) for u in range(300)], axis=0)
        for ts in (0, 10_000, 20_000, 40_000)
    ]
    assert 0.5 * np.abs(mean_taste[0] - mean_taste[2]).sum() > 0.2
    assert np.allclose(mean_taste[0], mean_taste[3])  # one full cycle later


def test_relevance_is_in_unit_range_and_higher_on_the_users_taste() -> None:
    sim = StreamSimulator(SimulatorConfig(users=100, items=1_000, embedding_dim=64), seed=0)
    items = sim.live_item_ids()
    on, off = [], []
    for u in range(100):
        user = f"u{u}"
        relevance = sim.relevances(user, items)
        assert np.all((relevance >= 0) & (relevance <= 1))
        taste = sim.taste(user)
        shares = np.array([taste[sim.categories.index(sim.item_category(i))] for i in items])
        on.append(relevance[shares == shares.max()].mean())
        off.append(relevance[shares < 0.01].mean())
    assert np.mean(on) > 0.4 > 0.2 > np.mean(off)
    assert sim.relevance("u0", items[0]) == pytest.approx(sim.relevances("u0", items[:1])[0])
    with pytest.raises(KeyError, match="unknown simulated user"):
        sim.relevance("u100", items[0])
    with pytest.raises(KeyError, match="unknown simulated item"):
        sim.relevance("u0", "nope")


def test_relevance_follows_drift() -> None:
    config = SimulatorConfig(users=20, items=600, embedding_dim=16, taste_drift_period_s=10.0)
    sim = StreamSimulator(config, seed=5)
    target = sim.categories[int(sim.taste("u0", ts_ms=10_000).argmax())]
    items = [i for i in sim.live_item_ids() if sim.item_category(i) == target]
    assert sim.relevances("u0", items, 10_000).mean() > sim.relevances("u0", items, 0).mean() + 0.2


@pytest.mark.parametrize(
    "bad",
    [{"churn_probability": 1.5}, {"taste_drift_share": -0.1}, {"taste_drift_period_s": -1.0}],
)
def test_config_rejects_impossible_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SimulatorConfig(**bad)  # type: ignore[arg-type]


# --- `streamrec simulate` ----------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()
    simulate_command.register(app, typer.Typer())
    app.command("noop")(lambda: None)  # a second command keeps `simulate` a named subcommand
    return app


VALIDATOR = EventValidator(embedding_dim=64, max_payload_bytes=1 << 20, max_future_ms=300_000)


def decoded(lines: list[bytes]) -> list[Interaction | Item]:
    now_ms = int(time.time() * 1000)
    return [VALIDATOR.decode(event_kind(orjson.loads(line)), line, now_ms=now_ms) for line in lines]


@pytest.mark.parametrize("name", ["stream.jsonl", "stream.jsonl.gz"])
def test_simulate_writes_the_catalog_then_n_valid_events_and_a_json_summary(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    args = ["simulate", "--events", "1500", "--items", "50", "--users", "30", "-o", str(path)]
    result = CliRunner().invoke(cli(), [*args, "--churn", "0.01", "--drift", "5", "--seed", "3"])
    assert result.exit_code == 0, result.output
    raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    events = decoded(raw.splitlines())
    assert len(events) == 50 + 1500
    assert all(isinstance(e, Item) for e in events[:50])
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert summary["events"] == 1500 and summary["catalog_items"] == 50
    assert sum(summary["by_kind"].values()) == 1500 and summary["by_kind"]["delete"] > 0
    # The stream ends about now, so `streamrec produce` takes it at once.
    assert abs(events[-1].ts - time.time() * 1000) < 60_000


def test_simulate_is_reproducible_and_takes_seconds_at_a_rate(tmp_path: Path) -> None:
    def run(name: str, seed: str) -> bytes:
        args = ["simulate", "--seconds", "2", "--rate", "300", "--items", "20", "--no-catalog"]
        result = CliRunner().invoke(
            cli(), [*args, "--seed", seed, "--start-ms", "1000", "-o", str(tmp_path / name)]
        )
        assert result.exit_code == 0, result.output
        return (tmp_path / name).read_bytes()

    first = run("a.jsonl", "7")
    assert first == run("b.jsonl", "7") != run("c.jsonl", "8")
    events = decoded(first.splitlines())
    assert len(events) == 600 and events[0].ts >= 1000
    assert 1_500 < events[-1].ts - events[0].ts < 2_500  # about 2 s of event time


@pytest.mark.parametrize(
    "args",
    [
        ["--events", "5", "--seconds", "1", "-o", "x.jsonl"],
        ["--events", "5"],
        ["--events", "5", "-o", "x.jsonl", "--kafka"],
    ],
)
def test_simulate_refuses_contradictory_options(args: list[str]) -> None:
    result = CliRunner().invoke(cli(), ["simulate", *args])
    assert result.exit_code == 2


def test_paced_production_follows_the_target_rate_with_live_event_times() -> None:
    bus = InProcessBus(partitions=2)
    sim = StreamSimulator(SimulatorConfig(users=30, items=20, interval_s=1 / 1_000), seed=1)
    summary = simulate_command.Summary(seed=1, output="bus")
    started = time.monotonic()
    simulate_command.produce_paced(
        sim, bus, rate=1_000.0, total=400, stop=threading.Event(), summary=summary
    )
    elapsed = time.monotonic() - started
    assert 0.35 < elapsed < 3.0  # 400 events at 1,000/s
    sent = bus.read(bus.topics.interactions) + bus.read(bus.topics.items)
    assert len(sent) == summary.events == 400
    assert summary.last_ts is not None and abs(summary.last_ts - time.time() * 1000) < 2_000
