"""`streamrec config show`, `schema`, `topics create` and `services up|down|status`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from streamrec.cli_common import ConfigOption, console, setup_command

config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
topics_app = typer.Typer(help="Manage Kafka topics.", no_args_is_help=True)
services_app = typer.Typer(help="Run a local Kafka broker and Redis server.", no_args_is_help=True)


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective configuration as JSON."""
    settings = setup_command(config)
    typer.echo(settings.model_dump_json(indent=2))


def schema() -> None:
    """Print the JSON Schema of event schema v1."""
    from streams.schema import json_schema

    typer.echo(json.dumps(json_schema(), indent=2, sort_keys=True))


@topics_app.command("create")
def topics_create(config: ConfigOption = None) -> None:
    """Create the topics (idempotent)."""
    from streams.io.kafka import create_topics

    settings = setup_command(config)
    for topic, outcome in create_topics(
        settings.kafka_bootstrap, settings.topics, settings.kafka_config
    ).items():
        typer.echo(f"{topic}: {outcome}")


def _print_services(rows: list[Any]) -> None:
    table = Table("service", "managed", "running", "endpoint", "detail")
    for row in rows:
        table.add_row(row.name, str(row.managed), str(row.running), row.endpoint, row.detail)
    Console().print(table)


@services_app.command("up")
def services_up(
    config: ConfigOption = None,
    redis_cluster: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=16,
            help="Also start a local Redis Cluster of this many masters "
            "(services.redis_cluster_nodes; 0: none)",
        ),
    ] = None,
) -> None:
    """Start local Kafka and Redis (unless STREAMREC_KAFKA_BOOTSTRAP/REDIS_URL are given)."""
    from streamrec import services

    settings = setup_command(config)
    if redis_cluster is not None:
        settings.services.redis_cluster_nodes = redis_cluster
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


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the configuration, schema, topics and services commands to the CLI."""
    app.add_typer(config_app, name="config")
    app.command()(schema)
    app.add_typer(topics_app, name="topics")
    app.add_typer(services_app, name="services")
