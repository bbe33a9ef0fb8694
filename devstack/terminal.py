"""The rich console every devstack command prints through."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

# Piped into a log or CI, rich falls back to 80 columns and truncates table headers; a wider
# page keeps every column readable there, and a real terminal keeps its own width.
PIPED_WIDTH = 132


def make_console() -> Console:
    console = Console()
    if not console.is_terminal:
        console.width = PIPED_WIDTH
    return console


def rows_table(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Table:
    """A table of ``rows`` (dicts) by ``columns`` (default: the first row's keys); None prints empty."""
    table = Table(title=title)
    columns = columns or (list(rows[0]) if rows else [])
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    return table
