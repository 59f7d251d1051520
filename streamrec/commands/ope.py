"""`streamrec ope`: off-policy evaluation of an ordering policy from impression logs.

``streamrec ope --log FILE [--log FILE ...] --policy NAME`` estimates the policy's click-rate
per bandit slot from recorded JSONL events (IPS, SNIPS, doubly robust, each with a bootstrap
95% interval) next to the logging policy's own. Policies: ``uniform``, ``logging``,
``greedy``, ``source:<name>``; ``--epsilon`` mixes in uniform exploration.

``streamrec ope --obd`` instead validates the estimators on the Open Bandit Dataset: BTS's
click-rate estimated from the random policy's log, against the rate BTS achieved (it fetches
the obp wheel from PyPI once, into ``--cache-dir``).

Both print a table, then one JSON object as the last stdout line (only the JSON with
``--json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from streamrec.cli_common import ConfigOption, console, setup_command


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add ``streamrec ope`` to the CLI (no benchmark: ``bench`` is left as it is)."""
    del bench
    app.command("ope")(ope)


def ope(
    log: Annotated[
        list[Path] | None, typer.Option("--log", help="JSONL event log; repeat for more files.")
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(help="Target policy: uniform, logging, greedy or source:<name>."),
    ] = None,
    epsilon: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of uniform exploration mixed in.")
    ] = 0.0,
    bootstrap: Annotated[int, typer.Option(min=1, help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of every random step.")] = 0,
    json_only: Annotated[bool, typer.Option("--json", help="Print only the JSON line.")] = False,
    obd: Annotated[
        bool, typer.Option("--obd", help="Validate the estimators on the Open Bandit Dataset.")
    ] = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the obp wheel is cached (with --obd) [default: .streamrec/cache/obp]."
        ),
    ] = None,
    campaign: Annotated[str, typer.Option(help="OBD campaign: all, men or women.")] = "all",
    n_sim: Annotated[
        int, typer.Option(min=100, help="Monte-Carlo draws of BTS's action distribution.")
    ] = 100_000,
    config: ConfigOption = None,
) -> None:
    """Estimate a source-ordering policy's click-rate off-policy from impression logs."""
    settings = setup_command(config)
    if obd and log:
        console.print("[red]give either --obd or --log, not both[/red]")
        raise typer.Exit(2)
    if obd:
        figures = _run_obd(cache_dir, campaign, n_sim, bootstrap, seed)
        rows = {
            "random (on-policy)": figures["random_ctr"],
            "bts (on-policy, the truth)": figures["bts_ctr"],
            **figures["estimates"],
        }
        title = f"OBD {campaign}: BTS's click-rate estimated from the random policy's log"
    else:
        if not log or policy is None:
            console.print("[red]give --log FILE and --policy NAME (or --obd)[/red]")
            raise typer.Exit(2)
        for path in log:
            if not path.is_file():
                console.print(f"[red]no such file:[/red] {path}")
                raise typer.Exit(2)
        from streamrec.evaluation.impression_log import evaluate_log
        from streamrec.wiring import validator

        try:
            figures = evaluate_log(
                log,
                policy,
                validator=validator(settings),
                learning=settings.learning,
                epsilon=epsilon,
                n_bootstrap=bootstrap,
                seed=seed,
            )
        except ValueError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        rows = {"logging (on-policy)": figures["logging_ctr"], **figures["estimates"]}
        title = f"policy {policy} (epsilon {epsilon:g}): click-rate per bandit slot"
    if not json_only:
        _print_estimates(title, rows)
    typer.echo(orjson.dumps(figures).decode())


def _run_obd(
    cache_dir: Path | None, campaign: str, n_sim: int, n_bootstrap: int, seed: int
) -> dict[str, Any]:
    # Imported here, not at the top: every CLI start imports this module, and numpy is slow.
    from streamrec.evaluation.obd import DEFAULT_CACHE_DIR, ObdError, validate_obd

    try:
        return validate_obd(
            cache_dir or DEFAULT_CACHE_DIR,
            campaign=campaign,
            n_sim=n_sim,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
    except ObdError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


def _print_estimates(title: str, rows: dict[str, dict[str, Any]]) -> None:
    """A table of estimates with their 95% intervals on stdout."""
    with_error = any("rel_error" in row for row in rows.values())
    table = Table("estimator", "value", "95% low", "95% high", title=title)
    if with_error:
        table.add_column("rel. error")
    for name, row in rows.items():
        cells = [name, f"{row['value']:.4%}", f"{row['low']:.4%}", f"{row['high']:.4%}"]
        if with_error:
            cells.append(f"{row['rel_error']:+.1%}" if "rel_error" in row else "")
        table.add_row(*cells)
    Console().print(table)
