"""`streamrec bench ingest|ann|freshness|feed|soak|memory|scale`: each prints a table, then one JSON
line of its figures (`bench eval` lives with `evaluate`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import orjson
import typer

from streamrec.cli_common import ConfigOption, setup_command

_BENCHES: list[tuple[str, Callable[..., None]]] = []


def _bench_command(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Remember a benchmark to register under ``name``."""

    def remember(fn: Callable[..., None]) -> Callable[..., None]:
        _BENCHES.append((name, fn))
        return fn

    return remember


@_bench_command("ingest")
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


@_bench_command("ann")
def bench_ann(
    n: Annotated[
        int, typer.Option(min=1000, help="Items in the index (1000000 for the 1M run).")
    ] = 100_000,
    dim: Annotated[int, typer.Option(min=2, help="Embedding dimension.")] = 64,
    queries: Annotated[int, typer.Option(min=10, help="Queries to time.")] = 5_000,
    insert_rate: Annotated[
        float, typer.Option(min=0, help="Items/s streamed in while querying (0: flat out).")
    ] = 5_000.0,
    seed: Annotated[int, typer.Option(help="Seed of the data.")] = 0,
) -> None:
    """HNSW inserts/s, QPS and recall@10 while inserts continue, against exact brute force."""
    from streamrec.bench.ann import run_ann_bench

    setup_command(None)
    figures = run_ann_bench(n=n, dim=dim, queries=queries, insert_rate=insert_rate, seed=seed)
    typer.echo(orjson.dumps(figures).decode())


@_bench_command("freshness")
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


@_bench_command("feed")
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


@_bench_command("soak")
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


@_bench_command("memory")
def bench_memory(
    config: ConfigOption = None,
    events: Annotated[int, typer.Option(min=1000, help="Simulated events to apply.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic stream.")] = 1,
) -> None:
    """Redis bytes per item and per active user; the seen-set against a Bloom filter."""
    from streamrec.bench.memory import run_memory_bench

    figures = run_memory_bench(setup_command(config), events=events, seed=seed)
    typer.echo(orjson.dumps(figures).decode())


@_bench_command("scale")
def bench_scale(
    config: ConfigOption = None,
    events: Annotated[int, typer.Option(min=1000, help="Events per configuration.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic stream.")] = 1,
    cluster_url: Annotated[
        str | None,
        typer.Option(
            help="A Redis Cluster (redis+cluster://host:port); default: start a local one."
        ),
    ] = None,
    shards: Annotated[
        int, typer.Option(min=2, max=1024, help="Shards of the namespace on the cluster.")
    ] = 12,
    repeats: Annotated[
        int, typer.Option(min=1, max=20, help="Rounds of the three runs; figures are medians.")
    ] = 3,
) -> None:
    """Events/s of 1 and 2 worker processes on 6 partitions: Redis Cluster and single Redis."""
    from streamrec.bench.scale import run_scale_bench

    settings = setup_command(config)
    figures = run_scale_bench(
        settings,
        events=events,
        seed=seed,
        cluster_url=cluster_url,
        shards=shards,
        repeats=repeats,
    )
    typer.echo(orjson.dumps(figures).decode())


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the benchmarks to ``bench``."""
    for name, command in _BENCHES:
        bench.command(name)(command)
