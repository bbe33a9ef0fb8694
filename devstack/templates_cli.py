"""``sendonce templates``: WhatsApp message templates, synced from Graph and listed.

The sweeper keeps the WABAs in ``SENDONCE_WHATSAPP_BUSINESS_ACCOUNTS`` synced on its own
schedule; ``sync`` does it now (after approving a template at Meta, say), ``status`` shows each
WABA's last sync and ``list`` what enqueue checks steps against.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

from devstack.terminal import make_console, rows_table
from shared.channels.whatsapp.templates import list_templates, sync_due, template_sync_status
from shared.providers.registry import make_http_client
from shared.providers.secrets import TokenSource
from shared.runtime import build_template_sync, database, settings

console = make_console()


class NoBusinessAccountsError(ValueError):
    """Nothing to sync: the settings name no WABA (or not the one asked for)."""


def cmd_templates_sync(args: argparse.Namespace) -> int:
    config = settings()
    accounts = config.whatsapp_business_accounts
    if not accounts:
        raise NoBusinessAccountsError(
            "no WhatsApp Business Account configured: set SENDONCE_WHATSAPP_BUSINESS_ACCOUNTS="
            '\'{"<waba-id>": ["<phone-number-id>"]}\''
        )
    if args.waba is not None:
        if args.waba not in accounts:
            raise NoBusinessAccountsError(
                f"WABA {args.waba} is not in SENDONCE_WHATSAPP_BUSINESS_ACCOUNTS "
                f"({', '.join(sorted(accounts))})"
            )
        accounts = {args.waba: accounts[args.waba]}
    client = make_http_client(config)
    try:
        sync = replace(build_template_sync(config, client, TokenSource(config)), business_accounts=accounts)
        report = sync_due(database(), sync, everything=True)
    finally:
        client.close()
    if args.json:
        print(json.dumps(report.model_dump(mode="json"), indent=2))
    else:
        for waba, count in report.synced.items():
            console.print(f"[green]synced[/] WABA {waba}: {count} templates")
        for waba, why in report.failed.items():
            console.print(f"[red]failed[/] WABA {waba}: {why} (the templates synced before are kept)")
    return 1 if report.failed else 0


def cmd_templates_status(args: argparse.Namespace) -> int:
    rows = template_sync_status(database())
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    columns = ["business_account_id", "synced_at", "templates", "approved", "last_error"]
    console.print(rows_table("template syncs", rows, columns))
    return 0


def cmd_templates_list(args: argparse.Namespace) -> int:
    rows = list_templates(database(), args.waba)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    columns = [
        "business_account_id",
        "name",
        "language",
        "status",
        "category",
        "body_parameters",
        "header_format",
    ]
    console.print(rows_table("WhatsApp templates (as last synced)", rows, columns))
    return 0


def add_templates_commands(sub: Any) -> None:
    templates = sub.add_parser("templates", help="WhatsApp message templates: sync from Graph, status, list")
    tsub = templates.add_subparsers(dest="templates_command", required=True, help="sync, status or list")
    sync = tsub.add_parser(
        "sync",
        help="list the configured WABAs' templates from Graph now",
        description="What the sweeper does every SENDONCE_TEMPLATE_SYNC_INTERVAL_SECONDS, now. Exit 1 "
        "if a WABA's sync failed (its templates synced before are kept).",
    )
    sync.add_argument("--waba", help="only this WhatsApp Business Account id (one of the configured ones)")
    sync.add_argument("--json", action="store_true", help="print JSON instead of lines")
    sync.set_defaults(run=cmd_templates_sync)
    status = tsub.add_parser("status", help="each WABA's last sync: when, how many templates, the last error")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(run=cmd_templates_status)
    listing = tsub.add_parser("list", help="the synced templates enqueue checks steps against")
    listing.add_argument("--waba", help="only this WhatsApp Business Account id")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(run=cmd_templates_list)
