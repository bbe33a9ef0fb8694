"""``sendonce contacts import`` and ``sendonce suppress``: thin wrappers over
``shared.contacts_import`` and ``shared.suppression`` (the library does the work; this module
parses arguments, draws the progress bar and prints reports)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any
from uuid import UUID

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from devstack.engine_cli import _config, _guarded, _print_report
from devstack.terminal import make_console, rows_table
from shared.contacts_import import ImportFileError, import_contacts
from shared.providers.outcome import Channel
from shared.runtime import database
from shared.suppression import add_suppression, list_suppressions, remove_suppression

console = make_console()


def cmd_contacts_import(args: argparse.Namespace) -> int:
    data = Path(args.file).read_bytes()
    stages: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=args.json,
        disable=args.json or not console.is_terminal,
    ) as bar:

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in stages:
                label = "reading rows" if stage == "read" else "writing contacts"
                stages[stage] = bar.add_task(label, total=max(total, 1))
            bar.update(stages[stage], completed=done, total=max(total, done, 1))

        try:
            report = import_contacts(
                database(), args.campaign, data, config=_config(), region=args.region, progress=progress
            )
        except ImportFileError as exc:
            console.print(f"[red]nothing was imported: {exc}[/]")
            return 1
    if args.json:
        print(json.dumps(report.model_dump(mode="json"), indent=2))
        return 0
    summary = report.model_dump(mode="json")
    problems = summary.pop("problems")
    for key, value in summary.items():
        console.print(f"{key}: {value}")
    if problems:
        table = Table(title=f"rows not imported (first {len(problems)}, by line)")
        for column in ("line", "reason", "detail"):
            table.add_column(column)
        for problem in problems:
            table.add_row(str(problem["line"]), problem["reason"], problem["detail"])
        console.print(table)
    return 0


def cmd_suppress_add(args: argparse.Namespace) -> int:
    report = add_suppression(
        database(),
        Channel(args.channel),
        args.address,
        reason=args.reason,
        operator=args.operator,
        sender=args.sender,
        region=args.region,
    )
    _print_report(console, report)
    return 0


def cmd_suppress_remove(args: argparse.Namespace) -> int:
    report = remove_suppression(
        database(),
        Channel(args.channel),
        args.address,
        reason=args.reason,
        operator=args.operator,
        sender=args.sender,
        region=args.region,
    )
    _print_report(console, report)
    return 0 if report.changed else 1


def cmd_suppress_list(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = list_suppressions(
        database(),
        channel=Channel(args.channel) if args.channel else None,
        address=args.address,
        include_removed=args.all,
    )
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    columns = ["channel", "address", "sender", "source", "reason", "created_by", "created_at", "removed_at"]
    console.print(rows_table("suppressions" + (" (lifted ones included)" if args.all else ""), rows, columns))
    return 0


def add_contacts_commands(sub: Any) -> None:
    contacts = sub.add_parser("contacts", help="import contacts into a campaign")
    csub = contacts.add_subparsers(dest="contacts_command", required=True, help="what to do with contacts")
    imp = csub.add_parser(
        "import",
        help="import a CSV file (columns: address, name, linkedin_url, custom fields) into a campaign",
    )
    imp.add_argument("file", help="CSV with a header row; UTF-8")
    imp.add_argument(
        "--campaign", type=UUID, required=True, help="the campaign the contacts join (must exist)"
    )
    imp.add_argument("--region", help="ISO 3166-1 alpha-2 region for national-format phone numbers")
    imp.add_argument("--json", action="store_true", help="print the report as JSON")
    imp.set_defaults(run=_guarded(cmd_contacts_import))


def _target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--channel", required=True, choices=[c.value for c in Channel], help="the address's channel"
    )
    parser.add_argument("--address", required=True, help="phone number, PSID or provider id")
    parser.add_argument("--sender", help="only for this sender account (default: the whole workspace)")
    parser.add_argument("--region", help="region for a national-format phone number")
    parser.add_argument("--reason", required=True, help="why (kept, and shown by sendonce audit)")
    parser.add_argument("--operator", required=True, help="who decides (kept, and shown by sendonce audit)")


def add_suppress_commands(sub: Any) -> None:
    suppress = sub.add_parser("suppress", help="the suppression list: addresses that get nothing")
    ssub = suppress.add_subparsers(dest="suppress_command", required=True, help="add, remove or list")
    add = ssub.add_parser("add", help="suppress an address and stop its sequences")
    _target(add)
    add.set_defaults(run=_guarded(cmd_suppress_add))
    remove = ssub.add_parser("remove", help="lift a suppression (stopped sequences stay stopped)")
    _target(remove)
    remove.set_defaults(run=_guarded(cmd_suppress_remove))
    listing = ssub.add_parser("list", help="list suppressions")
    listing.add_argument("--channel", choices=[c.value for c in Channel], help="only this channel")
    listing.add_argument("--address", help="only this address")
    listing.add_argument("--all", action="store_true", help="include lifted suppressions")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(run=_guarded(cmd_suppress_list))
