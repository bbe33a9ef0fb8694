"""The rich console every devstack command prints through."""

from __future__ import annotations

from rich.console import Console

# Piped into a log or CI, rich falls back to 80 columns and truncates table headers; a wider
# page keeps every column readable there, and a real terminal keeps its own width.
PIPED_WIDTH = 132


def make_console() -> Console:
    console = Console()
    if not console.is_terminal:
        console.width = PIPED_WIDTH
    return console
