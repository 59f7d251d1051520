"""Command groups kept out of ``streamrec/cli.py``: each module has ``register(app, bench)``."""

from __future__ import annotations

import typer


def register_all(app: typer.Typer, bench: typer.Typer) -> None:
    """Add every command module's commands to the CLI."""
    from streamrec.commands import embeddings, evaluate, ope, replay, simulate, verify

    simulate.register(app, bench)
    replay.register(app, bench)
    evaluate.register(app, bench)
    ope.register(app, bench)
    embeddings.register(app, bench)
    verify.register(app, bench)
