"""``sendonce campaign ...`` and ``sendonce sender ...``: the campaign engine's operator
commands. Each calls one library function (``shared.campaigns``, ``shared.sequences``,
``shared.senders``), the same ones the control function runs for its events."""

from __future__ import annotations

import argparse
import json
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ValidationError
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from devstack.terminal import make_console
from shared.addresses import InvalidAddressError
from shared.campaigns import (
    CampaignStateError,
    CampaignStatus,
    campaign_status,
    cancel_campaign,
    create_campaign,
    pause_campaign,
    resume_campaign,
    start_campaign,
)
from shared.enqueue import CampaignClosedError, CampaignConflictError
from shared.events import CampaignSpec
from shared.pacing import SenderPacing, policy_from_settings
from shared.providers.outcome import Channel
from shared.runtime import database, settings
from shared.senders import (
    SenderStatus,
    UnknownSenderError,
    configure_sender,
    pause_sender,
    resume_sender,
    sender_status,
)
from shared.sequences import EngineConfig, StopCause, stop_contact

console = make_console()

# What an operator can get wrong; each is printed as one clear line, exit code 1. An unknown
# campaign is left to `devstack.cli.main`, which says it the same way for every command.
OPERATOR_ERRORS = (
    CampaignStateError,
    CampaignConflictError,
    CampaignClosedError,
    UnknownSenderError,
    InvalidAddressError,
    ValidationError,
    ValueError,
)


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except OPERATOR_ERRORS as exc:
            console.print(f"[red]{type(exc).__name__}: {exc}[/]")
            return 1

    return guarded


def _print_report(console: Console, report: BaseModel, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(report.model_dump(mode="json"), indent=2))
        return
    for key, value in report.model_dump(mode="json").items():
        console.print(f"{key}: {value}")


def _config() -> EngineConfig:
    return EngineConfig.from_settings(settings())


# --- campaign -------------------------------------------------------------------------------------


def cmd_campaign_create(args: argparse.Namespace) -> int:
    spec = CampaignSpec.model_validate_json(Path(args.file).read_text())
    report = create_campaign(database(), spec, operator=args.operator, config=_config(), start=args.start)
    _print_report(console, report)
    return 0


def cmd_campaign_start(args: argparse.Namespace) -> int:
    _print_report(
        console, start_campaign(database(), args.campaign_id, operator=args.operator, config=_config())
    )
    return 0


def cmd_campaign_pause(args: argparse.Namespace) -> int:
    _print_report(
        console, pause_campaign(database(), args.campaign_id, operator=args.operator, reason=args.reason)
    )
    return 0


def cmd_campaign_resume(args: argparse.Namespace) -> int:
    _print_report(console, resume_campaign(database(), args.campaign_id, operator=args.operator))
    return 0


def cmd_campaign_cancel(args: argparse.Namespace) -> int:
    report = cancel_campaign(database(), args.campaign_id, operator=args.operator, reason=args.reason)
    _print_report(console, report)
    return 0


def cmd_campaign_stop_contact(args: argparse.Namespace) -> int:
    who = f"operator:{args.operator}"
    report = stop_contact(
        database(),
        Channel(args.channel),
        args.address,
        cause=StopCause.OPERATOR,
        reason=f"stopped by {who}" + (f": {args.reason}" if args.reason else ""),
        decided_by=who,
        campaign_id=args.campaign,
        region=args.region,
    )
    _print_report(console, report)
    return 0


def _until(at: datetime | None) -> str:
    if at is None or at <= datetime.now(UTC):
        return "-"
    # An operator's pause without an end is stored as Postgres' 'infinity'.
    return "until resumed" if at.year == datetime.max.year else at.isoformat(timespec="seconds")


def render_status(status: CampaignStatus) -> Group:
    """Progress per step and per sender, as tables."""
    header = Text.assemble(
        (f"{status.name} ", "bold"),
        f"({status.campaign_id})  status=",
        (status.status, "bold"),
        f"  channel={status.channel}  cross-campaign={status.cross_campaign_policy}",
        f"  as of {status.as_of:%H:%M:%S}",
    )
    steps = Table(title="steps")
    for column in (
        "step",
        "message type",
        "delay",
        "queued",
        "sent",
        "failed",
        "unknown",
        "cancelled",
        "replied",
    ):
        steps.add_column(column, justify="left" if column == "message type" else "right")
    for step in status.steps:
        steps.add_row(
            str(step.position),
            step.message_type,
            f"{step.delay_seconds}s",
            *(
                str(v)
                for v in (step.queued, step.sent, step.failed, step.unknown, step.cancelled, step.replied)
            ),
        )
    senders = Table(title="senders")
    for column in ("sender", "paused until", "contacts", "queued", "sent", "failed", "unknown", "cancelled"):
        senders.add_column(column, justify="left" if column in ("sender", "paused until") else "right")
    for sender in status.senders:
        paused = _until(sender.paused_until)
        senders.add_row(
            sender.provider_account_id,
            paused,
            *(
                str(v)
                for v in (
                    sender.contacts,
                    sender.queued,
                    sender.sent,
                    sender.failed,
                    sender.unknown,
                    sender.cancelled,
                )
            ),
        )
    contacts = Text("contacts: " + ", ".join(f"{k}={v}" for k, v in sorted(status.contacts.items())))
    return Group(header, steps, senders, contacts)


def cmd_campaign_status(args: argparse.Namespace) -> int:
    db = database()
    if not args.watch:
        status = campaign_status(db, args.campaign_id)
        if args.json:
            print(json.dumps(status.model_dump(mode="json"), indent=2))
        else:
            console.print(render_status(status))
        return 0
    # Ctrl-C only sets a flag, checked between refreshes: a KeyboardInterrupt raised inside a
    # query can leave the connection mid-protocol ("server closed the connection
    # unexpectedly"), and one run then hung at exit instead of stopping.
    # A second Ctrl-C interrupts at once, for a query that does not come back. (A plain flag,
    # not an Event: the handler runs on the main thread and must take no lock it may hold.)
    stopped: list[bool] = []

    def first_interrupt(*_: object) -> None:
        stopped.append(True)
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, first_interrupt)
    try:
        if console.is_terminal:
            with Live(render_status(campaign_status(db, args.campaign_id)), console=console) as live:
                while not stopped:
                    time.sleep(args.interval)
                    if not stopped:
                        live.update(render_status(campaign_status(db, args.campaign_id)))
        else:
            # Piped into a log: one snapshot per refresh, each complete on its own.
            while not stopped:
                console.print(render_status(campaign_status(db, args.campaign_id)))
                console.file.flush()
                time.sleep(args.interval)
    finally:
        signal.signal(signal.SIGINT, previous)
    console.print("stopped watching")
    return 0


# --- sender ---------------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> SenderStatus:
    return sender_status(database(), policy_from_settings(settings()), Channel(args.channel), args.account)


def _print_sender(console: Console, status: SenderStatus, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status.model_dump(mode="json"), indent=2))
        return
    table = Table(title=f"{status.channel.value} sender {status.provider_account_id}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for key, value in status.model_dump(mode="json").items():
        if key == "configured":
            value = {k: v for k, v in value.items() if v is not None}
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)


def cmd_sender_show(args: argparse.Namespace) -> int:
    _print_sender(console, _status(args), args.json)
    return 0


def cmd_sender_pause(args: argparse.Namespace) -> int:
    until = args.until
    if args.for_minutes is not None:
        until = datetime.now(UTC) + timedelta(minutes=args.for_minutes)
    pause_sender(
        database(),
        Channel(args.channel),
        args.account,
        until=until,
        reason=args.reason,
        operator=args.operator,
    )
    _print_sender(console, _status(args), False)
    return 0


def cmd_sender_resume(args: argparse.Namespace) -> int:
    resume_sender(database(), Channel(args.channel), args.account, operator=args.operator)
    _print_sender(console, _status(args), False)
    return 0


# Option name -> SenderPacing field, for `sender configure`.
PACING_OPTIONS: dict[str, str] = {
    "rate": "rate_per_second",
    "burst": "burst",
    "min_spacing": "min_spacing_seconds",
    "jitter": "spacing_jitter_seconds",
    "daily_message_cap": "daily_message_cap",
    "weekly_message_cap": "weekly_message_cap",
    "daily_invitation_cap": "daily_invitation_cap",
    "weekly_invitation_cap": "weekly_invitation_cap",
    "timezone": "timezone",
    "warmup_days": "warmup_days",
    "warmup_start_daily": "warmup_start_daily",
}


def pacing_from_args(args: argparse.Namespace, current: SenderPacing) -> SenderPacing:
    """The configuration after this command: the current one (none with --reset) with the
    options given on top, validated as a whole."""
    values: dict[str, Any] = {} if args.reset else current.model_dump()
    for option, name in PACING_OPTIONS.items():
        given = getattr(args, option)
        if given is not None:
            values[name] = given
    if args.window is not None:
        if args.window == "all-day":
            values["window_start"] = values["window_end"] = None
        else:
            start, _, end = args.window.partition("-")
            values["window_start"], values["window_end"] = (
                clock.fromisoformat(start),
                clock.fromisoformat(end),
            )
    if args.window_days is not None:
        values["window_days"] = (
            None if args.window_days == "all" else tuple(int(d) for d in args.window_days.split(","))
        )
    if args.warmup_start is not None:
        values["warmup_started_at"] = (
            datetime.now(UTC) if args.warmup_start == "now" else datetime.fromisoformat(args.warmup_start)
        )
    return SenderPacing.model_validate(values)


def cmd_sender_configure(args: argparse.Namespace) -> int:
    pacing = pacing_from_args(args, _status(args).configured)
    configure_sender(database(), Channel(args.channel), args.account, pacing, args.operator)
    _print_sender(console, _status(args), False)
    return 0


# --- parsers ----------------------------------------------------------------------------------------


def _aware(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} has no UTC offset; write e.g. 2026-01-05T09:00:00+01:00")
    return parsed


def _operator(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--operator", required=True, help="who takes this decision (recorded with it)")


def _campaign_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("campaign_id", type=UUID, metavar="ID", help="the campaign's id (a UUID)")


def _sender(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--channel", required=True, choices=[c.value for c in Channel], help="the sender's channel"
    )
    parser.add_argument(
        "--account",
        required=True,
        help="the provider account id: WhatsApp phone_number_id, Messenger page id, Unipile account id",
    )


def add_campaign_commands(sub: Any) -> None:
    campaign = sub.add_parser(
        "campaign",
        help="campaign lifecycle: create, start, pause, resume, cancel, stop a contact, status",
        description="Campaign lifecycle. States: draft -> active <-> paused -> completed | cancelled.",
    )
    commands = campaign.add_subparsers(dest="campaign_command", required=True, help="what to do")

    create = commands.add_parser(
        "create",
        help="create a campaign (draft) from a JSON spec",
        description="Create a campaign in draft from a JSON file: campaign_id, name, channel, senders "
        "(the pool), steps (message_type, body, delay_seconds, action), cross_campaign_policy (skip|allow), "
        "stop_on_events, contacts. Repeating the same create is harmless.",
    )
    create.add_argument(
        "--file", required=True, help="the campaign spec, JSON (shape: shared.events.CampaignSpec)"
    )
    create.add_argument(
        "--start", action="store_true", help="start it at once (queue step 1 for every contact)"
    )
    _operator(create)
    create.set_defaults(run=_guarded(cmd_campaign_create))

    start = commands.add_parser(
        "start", help="start a draft campaign", description="draft -> active: queue step 1 for every contact."
    )
    _campaign_id(start)
    _operator(start)
    start.set_defaults(run=_guarded(cmd_campaign_start))

    pause = commands.add_parser(
        "pause",
        help="pause an active campaign",
        description="active -> paused: nothing more is claimed; a claimed row goes back unsent; a send in "
        "flight finishes.",
    )
    _campaign_id(pause)
    _operator(pause)
    pause.add_argument("--reason", default="", help="why (recorded with the decision)")
    pause.set_defaults(run=_guarded(cmd_campaign_pause))

    resume = commands.add_parser(
        "resume",
        help="resume a paused campaign",
        description="paused -> active: pending rows become claimable again. Nothing is resent.",
    )
    _campaign_id(resume)
    _operator(resume)
    resume.set_defaults(run=_guarded(cmd_campaign_resume))

    cancel = commands.add_parser(
        "cancel",
        help="cancel a campaign",
        description="Cancel a draft, active or paused campaign: pending and claimed rows become cancelled, "
        "sent rows stay sent, a send in flight finishes.",
    )
    _campaign_id(cancel)
    _operator(cancel)
    cancel.add_argument("--reason", default="", help="why (recorded with the decision and on each row)")
    cancel.set_defaults(run=_guarded(cmd_campaign_cancel))

    stop = commands.add_parser(
        "stop-contact",
        help="stop a contact's sequences for good",
        description="Stop a contact's sequences: in one campaign, or in every campaign that holds it. Its "
        "pending rows are cancelled; a send in flight finishes.",
    )
    stop.add_argument(
        "--channel", required=True, choices=[c.value for c in Channel], help="the contact's channel"
    )
    stop.add_argument("--address", required=True, help="phone number, PSID or LinkedIn provider id")
    stop.add_argument("--campaign", type=UUID, help="only in this campaign (default: every campaign)")
    stop.add_argument("--region", help="ISO country code that reads a national-format phone number, e.g. GB")
    stop.add_argument("--reason", default="", help="why (recorded on the contact)")
    _operator(stop)
    stop.set_defaults(run=_guarded(cmd_campaign_stop_contact))

    status = commands.add_parser(
        "status",
        help="progress per step and per sender",
        description="Per step: queued, sent, failed, unknown, cancelled, replied. Per sender: contacts "
        "and rows. Counted from state every time.",
    )
    _campaign_id(status)
    status.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes with --watch")
    status.add_argument("--json", action="store_true", help="print JSON (without --watch)")
    status.set_defaults(run=_guarded(cmd_campaign_status))


def add_sender_commands(sub: Any) -> None:
    sender = sub.add_parser(
        "sender",
        help="sender accounts: show, pause, resume, configure pacing",
        description="Sender accounts, named by channel and provider account id.",
    )
    commands = sender.add_subparsers(dest="sender_command", required=True, help="what to do")

    show = commands.add_parser(
        "show", help="pacing, pause, usage and queue of a sender", description="What limits the sender now."
    )
    _sender(show)
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(run=_guarded(cmd_sender_show))

    pause = commands.add_parser(
        "pause",
        help="stop claiming a sender's rows",
        description="Its rows wait (never move to another sender); a send in flight finishes.",
    )
    _sender(pause)
    until = pause.add_mutually_exclusive_group()
    until.add_argument(
        "--until", type=_aware, help="ISO time with offset when the pause ends (default: until resumed)"
    )
    until.add_argument("--for-minutes", type=float, help="pause for this many minutes")
    pause.add_argument("--reason", default="", help="why (recorded with the decision)")
    _operator(pause)
    pause.set_defaults(run=_guarded(cmd_sender_pause))

    resume = commands.add_parser(
        "resume",
        help="lift a sender's pause",
        description="Lift any pause, the automatic ones included (e.g. once a revoked token was replaced).",
    )
    _sender(resume)
    _operator(resume)
    resume.set_defaults(run=_guarded(cmd_sender_resume))

    configure = commands.add_parser(
        "configure",
        help="set a sender's pacing",
        description="Change the options given and keep the rest (--reset: start from the channel's "
        "defaults). Unset values take the channel's defaults.",
    )
    _sender(configure)
    _operator(configure)
    configure.add_argument("--reset", action="store_true", help="start from the channel's defaults")
    configure.add_argument("--rate", type=float, help="messages per second (token bucket rate)")
    configure.add_argument("--burst", type=int, help="token bucket size")
    configure.add_argument("--min-spacing", type=float, help="minimum seconds between two sends")
    configure.add_argument("--jitter", type=float, help="random extra seconds added to each spacing")
    configure.add_argument("--daily-message-cap", type=int, help="messages per local day")
    configure.add_argument("--weekly-message-cap", type=int, help="messages per rolling week")
    configure.add_argument("--daily-invitation-cap", type=int, help="invitations per local day")
    configure.add_argument("--weekly-invitation-cap", type=int, help="invitations per rolling week")
    configure.add_argument("--timezone", help="IANA time zone of the window and of the daily caps")
    configure.add_argument(
        "--window", help="sending window, local HH:MM-HH:MM (an end before the start wraps), or all-day"
    )
    configure.add_argument(
        "--window-days", help="ISO weekdays of the window, e.g. 1,2,3,4,5 (1 = Monday), or all"
    )
    configure.add_argument("--warmup-days", type=int, help="days the daily caps ramp up over")
    configure.add_argument("--warmup-start-daily", type=int, help="the daily cap on the first warm-up day")
    configure.add_argument("--warmup-start", help="when the warm-up started: ISO time, or now")
    configure.set_defaults(run=_guarded(cmd_sender_configure))
