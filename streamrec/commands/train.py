"""`streamrec train embeddings`: collaborative item embeddings from a recorded log."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from streamrec.cli_common import ConfigOption, console, setup_command

train_app = typer.Typer(help="Train models from recorded logs.", no_args_is_help=True)


@train_app.command("embeddings")
def train_embeddings(
    input: Annotated[Path, typer.Option("--input", "-i", help="JSONL interaction log.")],
    items: Annotated[
        Path | None, typer.Option(help="JSONL items log, to publish whole records.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Write the upserts here as JSONL (default: stdout).")
    ] = None,
    publish: Annotated[bool, typer.Option(help="Send the upserts to the items topic.")] = False,
    window: Annotated[int, typer.Option(min=1, help="Co-occurrence window.")] = 5,
    min_count: Annotated[int, typer.Option(min=1, help="Least interactions per item.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the SVD.")] = 0,
    config: ConfigOption = None,
) -> None:
    """Learn collaborative item embeddings (PPMI + truncated SVD) from an interaction log."""
    from streamrec.train import embedding_upserts
    from streamrec.wiring import validator
    from streams.schema import encode

    settings = setup_command(config)
    for path in (input, items):
        if path is not None and not path.is_file():
            console.print(f"[red]no such file:[/red] {path}")
            raise typer.Exit(2)
    upserts, report = embedding_upserts(
        input, validator(settings), items_log=items, window=window, min_count=min_count, seed=seed
    )
    if publish:
        from streams.io.producer import EventProducer

        with EventProducer(settings.kafka_bootstrap, settings.topics, settings.kafka_config) as p:
            for upsert in upserts:
                p.send(upsert)
        report["published"] = len(upserts)
    elif output is not None:
        with output.open("wb") as out:
            out.writelines(encode(u) + b"\n" for u in upserts)
    else:
        sys.stdout.buffer.writelines(encode(u) + b"\n" for u in upserts)
    console.print(json.dumps(report))


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `train` to the CLI."""
    app.add_typer(train_app, name="train")
