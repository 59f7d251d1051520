"""`streamrec embeddings follow`: the one publisher of learned item embeddings in Kafka mode."""

from __future__ import annotations

from typing import Annotated

import typer

from streamrec.cli_common import ConfigOption, console, setup_command, stop_on_signals


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the `embeddings` command group."""
    embeddings_app = typer.Typer(
        help="Item embeddings learned from the live state.", no_args_is_help=True
    )
    app.add_typer(embeddings_app, name="embeddings")

    @embeddings_app.command("follow")
    def follow(
        config: ConfigOption = None,
        every: Annotated[
            float | None,
            typer.Option(min=1, help="Seconds between refreshes (default: embedding_refresh_s)."),
        ] = None,
        once: Annotated[bool, typer.Option(help="Refresh once and exit.")] = False,
    ) -> None:
        """Refresh collaborative item embeddings from Redis and publish them to the items topic.

        Every --every seconds of wall-clock time it reads the co-visitation state, learns
        aligned PPMI-SVD item vectors and produces an upsert for each item that is new or
        moved (items with their own content embedding are left alone).

        Run exactly one per deployment, beside the workers rather than inside them: each
        refresh is aligned to the vectors published before, which the refresher keeps, so
        two publishers would each rotate the space their own way and overwrite each other's
        vectors (and N workers would publish N copies of every upsert). A restart takes the
        learned vectors in Redis as its starting frame.
        """
        from features.keys import Keys
        from streamrec.wiring import live_store, wait_for_store
        from streams.io.producer import EventProducer
        from streams.worker.embedding_refresh import EmbeddingRefresher
        from streams.worker.embedding_refresh import follow as follow_store

        settings = setup_command(config)
        every_s = every if every is not None else settings.learning.embedding_refresh_s
        if every_s <= 0:
            console.print("learned embeddings are off (learning.embedding_refresh_s = 0)")
            raise typer.Exit(0)
        stop = stop_on_signals()
        store = live_store(settings)
        refresher = EmbeddingRefresher(
            store, Keys(settings.namespace), settings.features, settings.learning
        )
        try:
            if not wait_for_store(store, "embeddings", stop):
                return
            with EventProducer(
                settings.kafka_bootstrap, settings.topics, settings.kafka_config
            ) as producer:
                follow_store(refresher, producer, stop, every_s=every_s, once=once)
        finally:
            store.close()
        console.print(f"{refresher.stats.published} embedding upserts published")
