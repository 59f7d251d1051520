"""The `streamrec` command line: the composition root that wires features, streams and serving."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from streamrec.cli_common import ConfigOption, console, setup_command, stop_on_signals
from streamrec.commands import register_all

app = typer.Typer(
    help="streamrec: real-time recommendations from an event stream.", no_args_is_help=True
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
topics_app = typer.Typer(help="Manage Kafka topics.", no_args_is_help=True)
services_app = typer.Typer(help="Run a local Kafka broker and Redis server.", no_args_is_help=True)
train_app = typer.Typer(help="Train models from recorded logs.", no_args_is_help=True)
bench_app = typer.Typer(
    help="Benchmarks; the last stdout line is one JSON object.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(topics_app, name="topics")
app.add_typer(services_app, name="services")
app.add_typer(bench_app, name="bench")
app.add_typer(train_app, name="train")
register_all(app, bench_app)


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective configuration as JSON."""
    settings = setup_command(config)
    typer.echo(settings.model_dump_json(indent=2))


@app.command()
def schema() -> None:
    """Print the JSON Schema of event schema v1."""
    from streams.schema import json_schema

    typer.echo(json.dumps(json_schema(), indent=2, sort_keys=True))


@topics_app.command("create")
def topics_create(config: ConfigOption = None) -> None:
    """Create the topics (idempotent)."""
    from streams.kafka_io import create_topics

    settings = setup_command(config)
    for topic, outcome in create_topics(
        settings.kafka_bootstrap, settings.topics, settings.kafka_config
    ).items():
        typer.echo(f"{topic}: {outcome}")


@app.command()
def produce(
    source: Annotated[str, typer.Argument(help="JSONL file of events, or - for stdin.")],
    config: ConfigOption = None,
) -> None:
    """Validate JSONL events and send them to Kafka; bad lines are reported and skipped."""
    from streamrec.wiring import validator
    from streams.jsonl import produce_jsonl
    from streams.producer import EventProducer

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


@app.command()
def worker(
    config: ConfigOption = None,
    worker_id: Annotated[
        str | None,
        typer.Option(help="Stable name: heartbeats, logs, and static group membership."),
    ] = None,
) -> None:
    """Consume interactions and items from Kafka and apply them to Redis."""
    from streamrec.wiring import kafka_worker, wait_for_store

    settings = setup_command(config)
    stop = stop_on_signals()
    w = kafka_worker(settings, worker_id)
    if settings.worker.metrics_port:
        from streams.worker_metrics import WorkerMetrics

        WorkerMetrics(w).serve(settings.worker.metrics_port, stop)
    if wait_for_store(w.store, "worker", stop):
        w.run(stop)


@app.command()
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


@app.command()
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


def _print_services(rows: list[Any]) -> None:
    table = Table("service", "managed", "running", "endpoint", "detail")
    for row in rows:
        table.add_row(row.name, str(row.managed), str(row.running), row.endpoint, row.detail)
    Console().print(table)


@services_app.command("up")
def services_up(config: ConfigOption = None) -> None:
    """Start local Kafka and Redis (unless STREAMREC_KAFKA_BOOTSTRAP/REDIS_URL are given)."""
    from streamrec import services

    settings = setup_command(config)
    try:
        _print_services(services.services_up(settings))
    except services.ServiceError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


@services_app.command("down")
def services_down(config: ConfigOption = None) -> None:
    """Stop the local Kafka and Redis that `services up` started."""
    from streamrec import services

    _print_services(services.services_down(setup_command(config)))


@services_app.command("status")
def services_status(config: ConfigOption = None) -> None:
    """Show whether Kafka and Redis answer."""
    from streamrec import services

    rows = services.services_status(setup_command(config))
    _print_services(rows)
    if not all(row.running for row in rows):
        raise typer.Exit(1)


@bench_app.command("ingest")
def bench_ingest(
    config: ConfigOption = None,
    events: Annotated[int, typer.Option(min=1000, help="Events to produce and consume.")] = 200_000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic stream.")] = 1,
    faust: Annotated[
        bool, typer.Option("--faust", help="Also time the same path on faust-streaming agents.")
    ] = False,
) -> None:
    """Worker events/s into Redis against a bare confluent-kafka consume loop, same topic."""
    from streamrec.bench.ingest import run_ingest_bench

    settings = setup_command(config)
    figures = run_ingest_bench(settings, events=events, seed=seed, with_faust=faust)
    typer.echo(orjson.dumps(figures).decode())


@bench_app.command("ann")
def bench_ann(
    n: Annotated[
        int, typer.Option(min=1000, help="Items in the index (1000000 for the 1M run).")
    ] = 100_000,
    dim: Annotated[int, typer.Option(min=2, help="Embedding dimension.")] = 64,
    queries: Annotated[int, typer.Option(min=10, help="Queries to time.")] = 1_000,
    seed: Annotated[int, typer.Option(help="Seed of the data.")] = 0,
) -> None:
    """HNSW inserts/s, QPS and recall@10 while inserts continue, against exact brute force."""
    from streamrec.bench.ann import run_ann_bench

    setup_command(None)
    figures = run_ann_bench(n=n, dim=dim, queries=queries, seed=seed)
    typer.echo(orjson.dumps(figures).decode())


@bench_app.command("freshness")
def bench_freshness(
    config: ConfigOption = None,
    rate: Annotated[float, typer.Option(min=1, help="Background events per second.")] = 5000.0,
    seconds: Annotated[float, typer.Option(min=1, help="Seconds of load per phase.")] = 20.0,
    probes: Annotated[int, typer.Option(min=10, help="Timed interactions.")] = 200,
    new_items: Annotated[int, typer.Option(min=10, help="Timed new items.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic stream.")] = 0,
) -> None:
    """Event -> visible in trending and the session embedding; new item -> retrievable."""
    from streamrec.bench.freshness import run_freshness_bench

    figures = run_freshness_bench(
        setup_command(config),
        rate=rate,
        seconds=seconds,
        probes=probes,
        new_items=new_items,
        seed=seed,
    )
    typer.echo(orjson.dumps(figures).decode())


@bench_app.command("feed")
def bench_feed(
    config: ConfigOption = None,
    catalog: Annotated[
        int, typer.Option(min=1000, help="Items in the catalog (1000000 for the 1M run).")
    ] = 100_000,
    rate: Annotated[float, typer.Option(min=1, help="Ingestion events/s meanwhile.")] = 5000.0,
    seconds: Annotated[float, typer.Option(min=1, help="Seconds per measurement.")] = 15.0,
    connections: Annotated[int, typer.Option(min=1, help="Clients of the throughput run.")] = 4,
    k: Annotated[int, typer.Option(min=1, help="Feed length.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic stream.")] = 0,
) -> None:
    """Feed API latency (whole funnel and per stage) and requests/s against a trivial endpoint."""
    from streamrec.bench.feed import run_feed_bench

    figures = run_feed_bench(
        setup_command(config),
        catalog=catalog,
        rate=rate,
        seconds=seconds,
        connections=connections,
        k=k,
        seed=seed,
    )
    typer.echo(orjson.dumps(figures).decode())


@bench_app.command("soak")
def bench_soak(
    config: ConfigOption = None,
    minutes: Annotated[int, typer.Option(min=1, help="Minutes measured.")] = 10,
    warmup_minutes: Annotated[
        int, typer.Option(min=0, help="Minutes of load before them (attribution windows close).")
    ] = 6,
    rate: Annotated[float, typer.Option(min=1, help="Simulated events/s through Kafka.")] = 5000.0,
    requests_per_s: Annotated[float, typer.Option(min=0.1, help="Feed requests/s.")] = 40.0,
    catalog: Annotated[int, typer.Option(min=1000, help="Items in the catalog.")] = 20_000,
    users: Annotated[int, typer.Option(min=100, help="Users of the stream.")] = 50_000,
    seed: Annotated[int, typer.Option(help="Seed of the stream.")] = 0,
) -> None:
    """Worker and API under steady load: p50/p99, errors, lag and RSS minute by minute."""
    from streamrec.bench.soak import run_soak_bench

    figures = run_soak_bench(
        setup_command(config),
        minutes=minutes,
        warmup_minutes=warmup_minutes,
        rate=rate,
        requests_per_s=requests_per_s,
        catalog=catalog,
        users=users,
        seed=seed,
    )
    typer.echo(orjson.dumps(figures).decode())


@bench_app.command("memory")
def bench_memory(
    config: ConfigOption = None,
    events: Annotated[int, typer.Option(min=1000, help="Simulated events to apply.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic stream.")] = 1,
) -> None:
    """Redis bytes per item and per active user; the seen-set against a Bloom filter."""
    from streamrec.bench.memory import run_memory_bench

    figures = run_memory_bench(setup_command(config), events=events, seed=seed)
    typer.echo(orjson.dumps(figures).decode())


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
        from streams.producer import EventProducer

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


def main() -> None:
    """Console-script entry point."""
    app()
