"""What every `streamrec` command shares: the config option, logging setup, signals."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from streamrec import logs
from streamrec.settings import Settings, load_settings

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file (or STREAMREC_CONFIG_FILE).")
]
console = Console(stderr=True)
log = logging.getLogger("streamrec")


def setup_command(config: Path | None, verbose: bool = False) -> Settings:
    logs.configure(verbose)
    try:
        return load_settings(config)
    except Exception as exc:  # noqa: BLE001 - one readable line instead of a traceback
        console.print(f"[red]invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from None


def stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop
