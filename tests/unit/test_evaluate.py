"""Prequential evaluation: test-then-learn order, baselines, reproducibility, the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from streamrec.cli import app
from streamrec.evaluation.prequential import EvalOptions, PrequentialRun
from streamrec.settings import Settings
from streams.data.simulator import SimulatorConfig, StreamSimulator
from streams.schema import Event, Interaction, Item

T0 = 1_700_000_000_000


def click(user: str, item: str, ts: int) -> Interaction:
    return Interaction(
        event_id=f"{user}-{item}-{ts}", user_id=user, item_id=item, type="click", ts=ts
    )


def without_timing(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in ("timing", "events_per_s")}


def test_each_event_is_scored_before_it_is_learned() -> None:
    events: list[Event] = [
        click("u1", "a", T0),
        click("u2", "a", T0 + 1000),
        click("u1", "b", T0 + 2000),
    ]
    report = PrequentialRun(Settings(), EvalOptions()).run(events)
    assert report["evaluated"] == 3
    assert report["warm_evaluated"] == 1  # only u1's second event has history before it
    popular = report["metrics"]["most_popular"]["all"]
    # Event 1: nothing learned yet; event 2: "a" (learned from event 1) ranks first; event 3:
    # u1 has seen "a", and "b" was never seen before: a miss.
    assert popular["hr@10"] == pytest.approx(1 / 3)
    assert popular["mrr@10"] == pytest.approx(1 / 3)
    # The funnel learned the same way: event 2 finds "a" trending/popular after event 1.
    assert report["metrics"]["funnel"]["all"]["hr@10"] == pytest.approx(1 / 3)


def test_warmup_events_are_learned_but_not_scored() -> None:
    events: list[Event] = [click(f"u{n}", "a", T0 + n) for n in range(5)]
    report = PrequentialRun(Settings(), EvalOptions(warmup=3)).run(events)
    assert report["events"] == 5 and report["evaluated"] == 2
    assert report["metrics"]["most_popular"]["all"]["hr@10"] == 1.0


def simulated(n: int, seed: int = 3) -> list[Event]:
    sim = StreamSimulator(SimulatorConfig(users=60, items=200, embedding_dim=64), seed=seed)
    return [*sim.initial_items(ts_ms=T0), *sim.events(n, start_ms=T0 + 1000)]


def test_the_same_stream_and_seed_give_the_same_numbers() -> None:
    events = simulated(600)
    first = PrequentialRun(Settings(), EvalOptions(seed=7, series_every=100)).run(events)
    second = PrequentialRun(Settings(), EvalOptions(seed=7, series_every=100)).run(events)
    assert without_timing(first) == without_timing(second)
    assert first["evaluated"] > 300
    assert set(first["source_recall"]) >= {"trending", "popular", "fresh"}
    assert 0.0 < first["coverage"] <= 1.0 and first["novelty"] > 0.0
    assert len(first["series"]["evaluated"]) >= 3


def test_a_namespace_in_shards_gives_the_same_feeds() -> None:
    events = simulated(600)
    whole = PrequentialRun(Settings(), EvalOptions(seed=7)).run(events)
    in_shards = PrequentialRun(Settings(redis_shards=5), EvalOptions(seed=7)).run(events)
    assert without_timing(in_shards) == without_timing(whole)
    assert whole["evaluated"] > 300


def test_allow_repeats_lets_an_item_seen_before_be_a_hit() -> None:
    events: list[Event] = [
        Item(item_id="a", ts=T0, category="news"),
        click("u1", "a", T0 + 1000),
        click("u1", "a", T0 + 2000),
    ]
    strict = PrequentialRun(Settings(), EvalOptions(exclude_seen=True)).run(events)
    repeats = PrequentialRun(Settings(), EvalOptions(exclude_seen=False)).run(events)
    # The first click finds "a" among the fresh items either way; the second only may
    # find it again when repeats are allowed.
    assert strict["metrics"]["funnel"]["all"]["hr@10"] == 0.5
    assert repeats["metrics"]["funnel"]["all"]["hr@10"] == 1.0
    assert strict["metrics"]["most_popular"]["all"]["hr@10"] == 0.0
    assert repeats["metrics"]["most_popular"]["all"]["hr@10"] == 0.5


def test_the_command_reads_a_mapped_csv_and_writes_its_report(tmp_path: Path) -> None:
    rows = ["UserId,ItemId,Time,Rating"] + [
        f"u{n % 7},i{(n * 3) % 11},{1_700_000_000 + n},{1 + n % 5}" for n in range(80)
    ]
    rows.append("u1,i1,not-a-time,4")
    data = tmp_path / "ratings.csv"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(data),
            "--columns",
            "user=UserId,item=ItemId,ts=Time,rating=Rating",
            "--ts-unit",
            "s",
            "--type-from-rating",
            "4",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    last = json.loads(result.output.strip().splitlines()[-1])
    assert last["events"] == 80
    assert {"hr_at_10", "baseline_pop_hr_at_10", "baseline_covis_hr_at_10", "events_per_s"} <= set(
        last
    )
    assert last["input"]["rejected"] == 1
    for name in ("report.json", "report.md", "hr_over_time.png", "source_shares.png"):
        assert (out / name).stat().st_size > 0
    assert "HR@10" in (out / "report.md").read_text()


def test_a_bad_column_mapping_stops_with_one_line_naming_the_column(tmp_path: Path) -> None:
    data = tmp_path / "x.csv"
    data.write_text("UserId,ItemId,Time\nu,i,1\n")
    result = CliRunner().invoke(
        app, ["evaluate", str(data), "--columns", "user=UserId,item=Item,ts=Time"]
    )
    assert result.exit_code == 2
    assert "Item" in result.output


def test_a_stream_that_jumps_nineteen_years_is_evaluated_without_a_crash(tmp_path: Path) -> None:
    """The six events of issue 19: 1995, then 2015. The co-visitation landmark set by the
    first pair must move for the later pairs, not overflow (with the 7-day half-life of the
    report, and a 1-hour one: ~165,000 half-lives)."""
    data = tmp_path / "jump.tsv"
    data.write_text(
        "user\titem\tts\nu1\ti1\t800000000\nu1\ti2\t800000100\nu2\ti1\t1450000000\n"
        "u2\ti2\t1450000100\nu3\ti1\t1450000200\nu3\ti2\t1450000300\n"
    )
    for half_life_s in ("604800", "3600"):
        result = CliRunner().invoke(
            app,
            ["evaluate", str(data), "--columns", "user=user,item=item,ts=ts", "--ts-unit", "s"],
            env={"STREAMREC_FEATURES__COVISITATION_HALF_LIFE_S": half_life_s},
        )
        assert result.exit_code == 0, result.output
        last = json.loads(result.output.strip().splitlines()[-1])
        assert last["events"] == 6 and last["input"]["rejected"] == 0
        assert last["dead_lettered"] == 0
