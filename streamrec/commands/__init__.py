"""Command groups kept out of ``streamrec/cli.py``: each module has ``register(app, bench)``."""

from __future__ import annotations

import typer


def register_all(app: typer.Typer, bench: typer.Typer) -> None:
    """Add every command module's commands to the CLI."""
    from streamrec.commands import ope

    ope.register(app, bench)
