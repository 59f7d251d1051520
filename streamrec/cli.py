"""The `streamrec` command line: the composition root that wires features, streams and serving.

Every command lives in a module of :mod:`streamrec.commands`; this module only builds the app.
"""

from __future__ import annotations

import typer

from streamrec.commands import register_all

app = typer.Typer(
    help="streamrec: real-time recommendations from an event stream.", no_args_is_help=True
)
bench_app = typer.Typer(
    help="Benchmarks; the last stdout line is one JSON object.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
register_all(app, bench_app)


def main() -> None:
    """Console-script entry point."""
    app()
