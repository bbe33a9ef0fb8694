"""``sendonce``: the operator's command line.

Configured from the environment exactly like the functions (DATABASE_URL or
SENDONCE_DATABASE_SECRET_ID, SENDONCE_IDEMPOTENCY_TABLE, AWS credentials), so the same
commands work against the local stack and a deployed one.

    sendonce stats [--campaign ID]
    sendonce audit (--contact ADDRESS | --campaign ID) [--json]
    sendonce resolve QUEUE_ID (mark-sent [--provider-message-id ID] | fail | resend --i-accept-duplicate-risk)
                     --operator NAME --reason TEXT
    sendonce redrive [--campaign ID] [--reason-like PATTERN] --operator NAME
    sendonce duplicates [--lookback-hours N]
    sendonce unknown [--campaign ID] [--limit N] [--json]
    sendonce migrate [--dry-run]
    sendonce sweep
    sendonce campaign create --file SPEC.json [--start] --operator NAME
    sendonce campaign start|resume ID --operator NAME
    sendonce campaign pause|cancel ID --operator NAME [--reason TEXT]
    sendonce campaign stop-contact --channel CHANNEL --address ADDRESS [--campaign ID] --operator NAME
    sendonce campaign status ID [--watch [--interval SECONDS]] [--json]
    sendonce sender show --channel CHANNEL --account ID [--json]
    sendonce sender pause --channel CHANNEL --account ID [--until TIME | --for-minutes N] --operator NAME
    sendonce sender resume --channel CHANNEL --account ID --operator NAME
    sendonce sender configure --channel CHANNEL --account ID --operator NAME [pacing options]
    sendonce contacts import FILE.csv --campaign ID [--region CC] [--json]
    sendonce suppress add|remove --channel CHANNEL --address ADDRESS [--sender ID]
                     --reason TEXT --operator NAME
    sendonce suppress list [--channel CHANNEL] [--address ADDRESS] [--all] [--json]

Every command and option has --help.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from uuid import UUID

from rich.table import Table

from devstack.contacts_cli import add_contacts_commands, add_suppress_commands
from devstack.engine_cli import add_campaign_commands, add_sender_commands
from devstack.terminal import make_console
from shared.absence import held_unknowns
from shared.reconcile import (
    DecisionError,
    OperatorAction,
    ReconcileDeps,
    audit,
    campaign_stats,
    detect_duplicates,
    redrive,
    resolve,
)
from shared.runtime import build_guard, database, settings, sweep_deps
from shared.storage.migrate import migrate
from shared.sweeper import sweep

console = make_console()


def _reconcile_deps() -> ReconcileDeps:
    from shared.queue import QueueRepository

    config = settings()
    return ReconcileDeps(config, QueueRepository(database()), build_guard(config))


def _table(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Table:
    table = Table(title=title)
    columns = columns or (list(rows[0]) if rows else [])
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    return table


def cmd_stats(args: argparse.Namespace) -> int:
    rows = campaign_stats(database(), args.campaign)
    console.print(_table("campaigns (counted from queue and ledger state)", rows))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    found = audit(database(), campaign_id=args.campaign, address=args.contact)
    if args.json:
        print(json.dumps(found, default=str, indent=2))
        return 0
    console.print(
        _table(
            "queue rows",
            found["queue"],
            [
                "queue_id",
                "campaign",
                "channel",
                "recipient",
                "message_type",
                "body",
                "status",
                "attempts",
                "provider_message_id",
                "sent_at",
            ],
        )
    )
    console.print(
        _table(
            "ledger",
            found["ledger"],
            ["queue_id", "provider_message_id", "delivery_status", "sent_at", "recovered_from"],
        )
    )
    console.print(
        _table(
            "provider attempts",
            found["attempts"],
            ["queue_id", "attempt", "outcome", "reason", "recorded_at"],
        )
    )
    console.print(
        _table(
            "provider events",
            found["provider_events"],
            ["channel", "event_type", "status", "provider_message_id", "received_at"],
        )
    )
    console.print(
        _table(
            "decisions",
            found["decisions"],
            ["queue_id", "from_status", "to_status", "decided_by", "reason", "decided_at"],
        )
    )
    console.print(
        _table(
            "suppressions",
            found["suppressions"],
            [
                "channel",
                "address",
                "sender",
                "source",
                "reason",
                "created_by",
                "created_at",
                "removed_at",
                "removed_by",
            ],
        )
    )
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    action = OperatorAction(args.action)
    if action is OperatorAction.RESEND and not args.i_accept_duplicate_risk:
        console.print("[red]resend may deliver a second copy; pass --i-accept-duplicate-risk to confirm[/]")
        return 2
    try:
        status = resolve(
            _reconcile_deps(), args.queue_id, action, args.operator, args.reason, args.provider_message_id
        )
    except DecisionError as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    console.print(f"row {args.queue_id} is now {status}; decision recorded")
    return 0


def cmd_redrive(args: argparse.Namespace) -> int:
    report = redrive(
        _reconcile_deps(), campaign_id=args.campaign, reason_like=args.reason_like, operator=args.operator
    )
    console.print(f"requeued {len(report.requeued)}: {report.requeued}")
    for queue_id, why in report.skipped.items():
        console.print(f"  skipped {queue_id}: {why}")
    return 0


def cmd_duplicates(args: argparse.Namespace) -> int:
    suspects = detect_duplicates(database(), args.lookback_hours * 3600)
    if not suspects:
        console.print("[green]no suspected duplicates[/]")
        return 0
    console.print(_table("suspected duplicates", suspects))
    return 1


def cmd_unknown(args: argparse.Namespace) -> int:
    rows = held_unknowns(database(), settings(), campaign_id=args.campaign, limit=args.limit)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    if not rows:
        console.print("[green]no unknown rows[/]")
        return 0
    for row in rows:
        console.print(
            f"[bold]{row['queue_id']}[/] {row['channel']} ({row['campaign']}) policy={row['policy']} "
            f"attempts={row['attempts']} unknown since {row['unknown_since']:%Y-%m-%d %H:%M:%S %Z}"
        )
        console.print(f"  held: {row['why']}")
        console.print(f"  next: {row['next_step']}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    report = migrate(database(), dry_run=args.dry_run)
    console.print(f"applied={report.applied} already applied={report.already_applied} dry_run={args.dry_run}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    console.print(sweep(sweep_deps()).model_dump())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sendonce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    stats = sub.add_parser("stats", help="campaign statistics, counted from state")
    stats.add_argument("--campaign", type=UUID)
    stats.set_defaults(run=cmd_stats)

    audit_cmd = sub.add_parser(
        "audit", help="every queue row, attempt, event and decision for a contact or campaign"
    )
    target = audit_cmd.add_mutually_exclusive_group(required=True)
    target.add_argument("--contact", help="the contact's address (phone digits, PSID, Unipile id)")
    target.add_argument("--campaign", type=UUID)
    audit_cmd.add_argument("--json", action="store_true")
    audit_cmd.set_defaults(run=cmd_audit)

    res = sub.add_parser("resolve", help="decide an unknown row by hand")
    res.add_argument("queue_id", type=int)
    res.add_argument("action", choices=[a.value for a in OperatorAction])
    res.add_argument("--operator", required=True)
    res.add_argument("--reason", required=True)
    res.add_argument("--provider-message-id")
    res.add_argument("--i-accept-duplicate-risk", action="store_true")
    res.set_defaults(run=cmd_resolve)

    red = sub.add_parser("redrive", help="requeue failed messages once the cause is fixed (idempotent)")
    red.add_argument("--campaign", type=UUID)
    red.add_argument("--reason-like", help="SQL LIKE pattern on the failure reason, e.g. 'whatsapp:131047%%'")
    red.add_argument("--operator", required=True)
    red.set_defaults(run=cmd_redrive)

    dup = sub.add_parser("duplicates", help="suspected duplicate deliveries (exit 1 if any)")
    dup.add_argument("--lookback-hours", type=int, default=24)
    dup.set_defaults(run=cmd_duplicates)

    unk = sub.add_parser("unknown", help="held unknown rows: why each is held and the next step")
    unk.add_argument("--campaign", type=UUID)
    unk.add_argument("--limit", type=int, default=200)
    unk.add_argument("--json", action="store_true")
    unk.set_defaults(run=cmd_unknown)

    mig = sub.add_parser("migrate", help="apply pending schema migrations")
    mig.add_argument("--dry-run", action="store_true")
    mig.set_defaults(run=cmd_migrate)

    swp = sub.add_parser("sweep", help="run one sweep now")
    swp.set_defaults(run=cmd_sweep)

    add_campaign_commands(sub)
    add_sender_commands(sub)
    add_contacts_commands(sub)
    add_suppress_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
