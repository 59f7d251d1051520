"""Printing benchmark results: a readable table, then one JSON line (printed by the CLI)."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.table import Table


def print_table(title: str, rows: Mapping[str, object]) -> None:
    """A two-column table of figures on stdout."""
    table = Table("figure", "value", title=title)
    for name, value in rows.items():
        table.add_row(name, f"{value:,.3f}" if isinstance(value, float) else str(value))
    Console().print(table)
