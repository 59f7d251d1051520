"""`streamrec produce`, `worker`, `serve` and `demo`: the processes of a deployment."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from streamrec.cli_common import ConfigOption, console, setup_command, stop_on_signals


def produce(
    source: Annotated[str, typer.Argument(help="JSONL file of events, or - for stdin.")],
    config: ConfigOption = None,
) -> None:
    """Validate JSONL events and send them to Kafka; bad lines are reported and skipped."""
    from streamrec.wiring import validator
    from streams.data.jsonl import produce_jsonl
    from streams.io.producer import EventProducer

    settings = setup_command(config)
    stream = sys.stdin.buffer if source == "-" else Path(source).open("rb")  # noqa: SIM115
    with (
        stream,
        EventProducer(settings.kafka_bootstrap, settings.topics, settings.kafka_config) as producer,
    ):
        report = produce_jsonl(stream, producer, validator(settings))
    typer.echo(json.dumps(report))
    if report["rejected"]:
        raise typer.Exit(1)


def worker(
    config: ConfigOption = None,
    worker_id: Annotated[
        str | None,
        typer.Option(help="Stable name: heartbeats, logs, and static group membership."),
    ] = None,
) -> None:
    """Consume interactions and items from Kafka and apply them to Redis."""
    from features.stores.sharded_store import ShardLayoutError
    from streamrec.wiring import kafka_worker, shard_layout, wait_for_store

    settings = setup_command(config)
    stop = stop_on_signals()
    w = kafka_worker(settings, worker_id)
    if settings.worker.metrics_port:
        from streams.worker.metrics import WorkerMetrics

        WorkerMetrics(w).serve(settings.worker.metrics_port, stop)
    try:
        ready = wait_for_store(
            w.store, "worker", stop, layout=shard_layout(settings), record_layout=True
        )
    except ShardLayoutError as exc:
        console.print(f"[red]worker: {exc}[/red]")
        raise typer.Exit(2) from None
    if ready:
        w.run(stop)


def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
) -> None:
    """Serve the feed API on Redis and Kafka."""
    import uvicorn

    from serving.app import create_app
    from streamrec.wiring import kafka_resources

    settings = setup_command(config)
    serving = settings.serving.model_copy(
        update={k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    )
    api = create_app(serving, lambda: kafka_resources(settings))
    uvicorn.run(api, host=serving.host, port=serving.port, log_level="warning")


def demo(
    config: ConfigOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic stream.")] = 42,
    rate: Annotated[float, typer.Option(min=1, help="Synthetic events per second.")] = 200.0,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
) -> None:
    """Run everything in one process, no Kafka or Redis: simulator, worker and API."""
    from streamrec.demo import run_demo

    settings = setup_command(config)
    if port is not None:
        settings.serving.port = port
    run_demo(settings, seed=seed, rate=rate, duration_s=duration)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the deployment's processes to the CLI."""
    for command in (produce, worker, serve, demo):
        app.command()(command)
