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
    sendonce templates sync [--waba ID] | status | list [--waba ID]   [--json]

Every command and option has --help.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from uuid import UUID

import psycopg
from pydantic import ValidationError

from devstack.contacts_cli import add_contacts_commands, add_suppress_commands
from devstack.engine_cli import add_campaign_commands, add_sender_commands
from devstack.templates_cli import NoBusinessAccountsError, add_templates_commands
from devstack.terminal import make_console, rows_table
from shared.absence import held_unknowns
from shared.enqueue import UnknownCampaignError
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
from shared.runtime import ConfigurationError, build_guard, database, settings, sweep_deps
from shared.storage.db import DatabaseMisconfiguredError, DatabaseUnavailableError
from shared.storage.migrate import migrate
from shared.sweeper import sweep

console = make_console()


def _reconcile_deps() -> ReconcileDeps:
    from shared.queue import QueueRepository

    config = settings()
    return ReconcileDeps(config, QueueRepository(database()), build_guard(config))


def _known_campaign(campaign_id: UUID | None) -> None:
    if campaign_id is not None and not campaign_stats(database(), campaign_id):
        raise UnknownCampaignError(f"no campaign {campaign_id}")


def cmd_stats(args: argparse.Namespace) -> int:
    rows = campaign_stats(database(), args.campaign)
    if args.campaign is not None and not rows:
        raise UnknownCampaignError(f"no campaign {args.campaign}")
    console.print(rows_table("campaigns (counted from queue and ledger state)", rows))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    _known_campaign(args.campaign)
    found = audit(database(), campaign_id=args.campaign, address=args.contact)
    if args.json:
        print(json.dumps(found, default=str, indent=2))
        return 0
    console.print(
        rows_table(
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
        rows_table(
            "ledger",
            found["ledger"],
            ["queue_id", "provider_message_id", "delivery_status", "sent_at", "recovered_from"],
        )
    )
    console.print(
        rows_table(
            "provider attempts",
            found["attempts"],
            ["queue_id", "attempt", "outcome", "reason", "recorded_at"],
        )
    )
    console.print(
        rows_table(
            "provider events",
            found["provider_events"],
            ["channel", "event_type", "status", "provider_message_id", "received_at"],
        )
    )
    console.print(
        rows_table(
            "decisions",
            found["decisions"],
            ["queue_id", "from_status", "to_status", "decided_by", "reason", "decided_at"],
        )
    )
    console.print(
        rows_table(
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
    _known_campaign(args.campaign)
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
    console.print(rows_table("suspected duplicates", suspects))
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
    sub = parser.add_subparsers(
        dest="command", required=True, help="the command; `sendonce COMMAND --help` for its own"
    )

    stats = sub.add_parser(
        "stats",
        help="campaign statistics, counted from state",
        description="Per campaign: rows pending, in flight, sent, delivered, read, failed, unknown, "
        "cancelled.",
    )
    stats.add_argument("--campaign", type=UUID, help="only this campaign (its id); default: every campaign")
    stats.set_defaults(run=cmd_stats)

    audit_cmd = sub.add_parser(
        "audit",
        help="every queue row, attempt, event and decision for a contact or campaign",
        description="Everything known about one contact or one campaign: queue rows, ledger, provider "
        "attempts, provider events and operator decisions. Prints addresses: for operators only.",
    )
    target = audit_cmd.add_mutually_exclusive_group(required=True)
    target.add_argument("--contact", help="the contact's address (phone digits, PSID, Unipile id)")
    target.add_argument("--campaign", type=UUID, help="a campaign id")
    audit_cmd.add_argument("--json", action="store_true", help="print JSON instead of tables")
    audit_cmd.set_defaults(run=cmd_audit)

    res = sub.add_parser(
        "resolve",
        help="decide an unknown row by hand",
        description="Settle a row whose send outcome is unknown: mark-sent (you found the message at "
        "the provider), fail (it was not delivered and must not be), or resend (may deliver twice).",
    )
    res.add_argument("queue_id", type=int, help="the row's queue id (from `sendonce audit`)")
    res.add_argument("action", choices=[a.value for a in OperatorAction], help="the decision")
    res.add_argument("--operator", required=True, help="who decides (recorded with the decision)")
    res.add_argument("--reason", required=True, help="why (recorded with the decision)")
    res.add_argument("--provider-message-id", help="with mark-sent: the provider's id of the message found")
    res.add_argument(
        "--i-accept-duplicate-risk",
        action="store_true",
        help="required with resend: the contact may get two copies",
    )
    res.set_defaults(run=cmd_resolve)

    red = sub.add_parser(
        "redrive",
        help="requeue failed messages once the cause is fixed (idempotent)",
        description="Requeue failed rows (all, one campaign's, or those whose reason matches); a row "
        "that may have reached the provider is skipped and says why.",
    )
    red.add_argument("--campaign", type=UUID, help="only this campaign's failed rows")
    red.add_argument("--reason-like", help="SQL LIKE pattern on the failure reason, e.g. 'whatsapp:131047%%'")
    red.add_argument("--operator", required=True, help="who requeues (recorded with each decision)")
    red.set_defaults(run=cmd_redrive)

    dup = sub.add_parser(
        "duplicates",
        help="suspected duplicate deliveries (exit 1 if any)",
        description="Rows a provider reported delivering more than once, from webhook evidence.",
    )
    dup.add_argument("--lookback-hours", type=int, default=24, help="how far back to look (default 24)")
    dup.set_defaults(run=cmd_duplicates)

    unk = sub.add_parser(
        "unknown",
        help="held unknown rows: why each is held and the next step",
        description="List the rows held in `unknown`, with why each is still held and what to do next.",
    )
    unk.add_argument("--campaign", type=UUID, help="only this campaign's rows")
    unk.add_argument("--limit", type=int, default=200, help="at most this many rows (default 200)")
    unk.add_argument("--json", action="store_true", help="print JSON instead of a table")
    unk.set_defaults(run=cmd_unknown)

    mig = sub.add_parser(
        "migrate",
        help="apply pending schema migrations",
        description="Apply the files of shared/storage/migrations/ not yet applied, in order, under a lock.",
    )
    mig.add_argument("--dry-run", action="store_true", help="list what would be applied; change nothing")
    mig.set_defaults(run=cmd_migrate)

    swp = sub.add_parser(
        "sweep",
        help="run one sweep now",
        description="What the scheduled sweeper does: settle expired leases, publish failed messages, "
        "reconcile unknown rows, report backlog gauges.",
    )
    swp.set_defaults(run=cmd_sweep)

    add_campaign_commands(sub)
    add_sender_commands(sub)
    add_contacts_commands(sub)
    add_suppress_commands(sub)
    add_templates_commands(sub)
    return parser


# Postgres' errors when the schema is missing or older than the code.
_SCHEMA_ERRORS = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedColumn,
    psycopg.errors.UndefinedFunction,
)


def explain_failure(exc: BaseException) -> str | None:
    """The one line (what went wrong, and the fix) for a failure an operator can cause or fix;
    None for a bug, which keeps its traceback."""
    if isinstance(exc, ConfigurationError):
        if "set DATABASE_URL" in str(exc):
            return (
                "no database configured: set DATABASE_URL (for the local stack: "
                'eval "$(make -s env)") or SENDONCE_DATABASE_SECRET_ID'
            )
        return f"database configuration refused: {exc}"
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        return f"configuration invalid: {where}: {first['msg']}; fix the SENDONCE_* variable"
    if isinstance(exc, DatabaseUnavailableError):
        return f"database unreachable: {exc}. Is it running (`make up` locally) and is DATABASE_URL right?"
    if isinstance(exc, _SCHEMA_ERRORS):
        detail = str(exc).splitlines()[0]
        return f"schema not migrated ({detail}): run `sendonce migrate`"
    if isinstance(exc, DatabaseMisconfiguredError):
        return str(exc)
    if isinstance(exc, NoBusinessAccountsError):
        return str(exc)
    if isinstance(exc, UnknownCampaignError):
        return f"unknown campaign: {exc}; `sendonce stats` lists the campaigns"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # psycopg's pool logs every failed connection attempt; the one line below says it all.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    try:
        result: int = args.run(args)
    except Exception as exc:
        line = explain_failure(exc)
        if line is None:
            raise
        print(f"sendonce: {line}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
