"""Every command of the CLI, by group: each module has ``register(app, bench)``."""

from __future__ import annotations

import typer


def register_all(app: typer.Typer, bench: typer.Typer) -> None:
    """Add every command module's commands to the CLI."""
    from streamrec.commands import (
        admin,
        embeddings,
        evaluate,
        ope,
        replay,
        run,
        simulate,
        train,
        verify,
    )
    from streamrec.commands import (
        bench as benches,
    )

    run.register(app, bench)
    admin.register(app, bench)
    simulate.register(app, bench)
    replay.register(app, bench)
    evaluate.register(app, bench)
    ope.register(app, bench)
    embeddings.register(app, bench)
    verify.register(app, bench)
    train.register(app, bench)
    benches.register(app, bench)
