"""devstack's console: readable tables when the output is piped into a log."""

from __future__ import annotations

import io

from rich.table import Table

from devstack.terminal import PIPED_WIDTH, make_console


def test_piped_console_is_wide_enough_for_untruncated_headers() -> None:
    console = make_console()
    assert not console.is_terminal  # pytest captures stdout
    assert console.width == PIPED_WIDTH
    console.file = io.StringIO()
    table = Table()
    for header in ("dispatchers", "latency ms", "msg/s", "wall s", "pg ms/msg", "ddb ms/msg", "duplicates"):
        table.add_column(header)
    table.add_row("1", "0", "99.5", "20.1", "5.09", "57.38", "0")
    console.print(table)
    printed = console.file.getvalue()
    assert "dispatchers" in printed and "duplicates" in printed
    assert "…" not in printed
