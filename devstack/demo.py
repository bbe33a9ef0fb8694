"""``make demo``: the whole local stack, end to end.

Starts an embedded Postgres, a moto server and the fake provider on 127.0.0.1; migrates
through the real migrate handler; enqueues demo campaigns on all three channels (with
duplicate contacts, and the same enqueue raced twice); runs several overlapping dispatcher
invocations as separate OS processes plus a sweeper; then prints what the provider received.
The verdict line is the point: every message reached its recipient exactly once, and the
messages that could not be sent say why.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections import Counter
from pathlib import Path

from rich.table import Table

from devstack.stack import ROOT, LocalStack
from devstack.terminal import make_console
from shared.observability import scrub
from shared.queue import QueueRepository

console = make_console()
EVENTS = ROOT / "events"


def demo_campaigns(contacts: int) -> list[dict[str, object]]:
    phones = [f"+1 555 01{i:05d}" for i in range(contacts)]
    psids = [f"70{i:08d}" for i in range(contacts // 2)]
    members = [f"ACoAAdemo{i:05d}" for i in range(contacts // 2)]
    common = {"source": "sendonce.manual"}
    return [
        {
            **common,
            "campaign_id": str(uuid.uuid4()),
            "campaign_name": "demo whatsapp",
            "channel": "whatsapp",
            "sender_provider_id": "106540352242922",
            # The same people again, typed differently: the seed 003 duplicate-contact request.
            "contacts": [{"address": p} for p in phones]
            + [{"address": p.replace(" ", "")} for p in phones[:10]],
            "steps": [
                {"message_type": "intro", "body": "Hi from sendonce"},
                {"message_type": "follow_up", "body": "Following up"},
            ],
        },
        {
            **common,
            "campaign_id": str(uuid.uuid4()),
            "campaign_name": "demo messenger",
            "channel": "messenger",
            "sender_provider_id": "page-1234",
            "contacts": [{"address": p} for p in psids + psids[:5]],
            "steps": [{"message_type": "intro", "body": "Hello from our page"}],
        },
        {
            **common,
            "campaign_id": str(uuid.uuid4()),
            "campaign_name": "demo linkedin",
            "channel": "linkedin",
            "sender_provider_id": "unipile-account-1",
            "contacts": [{"address": m} for m in members],
            "steps": [{"message_type": "direct_message_1", "body": "Great to connect"}],
        },
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=60, help="WhatsApp contacts (others get half)")
    parser.add_argument("--dispatchers", type=int, default=4, help="overlapping dispatcher processes")
    parser.add_argument("--keep", type=Path, help="keep logs and events in this folder")
    args = parser.parse_args(argv)

    with console.status("starting Postgres, moto and the fake provider on 127.0.0.1") as status:
        stack = LocalStack(durable_postgres=True, workdir=args.keep, migrate=False).start()
    try:
        console.print(f"[bold]local stack[/] postgres={stack.db_url}")
        console.print(f"moto={stack.moto.endpoint}  fake provider={stack.fake.url}")
        console.print(f"logs: {stack.workdir}")
        migrated = stack.spawn("migrate", EVENTS / "migrate.json").finish()
        console.print(f"migrate handler: applied={migrated['applied']} already={migrated['already_applied']}")

        campaigns = demo_campaigns(args.contacts)
        for campaign in campaigns:
            # Two enqueues of the same campaign at once: the seed 004 race.
            racing = [stack.spawn("enqueue", campaign, log_name="enqueue") for _ in range(2)]
            reports = [r.finish() for r in racing]
            console.print(
                f"enqueue {campaign['channel']!s:<9} contacts={reports[0]['contacts_received']:>3} "
                f"duplicates={reports[0]['duplicate_contacts_dropped']:>3} "
                f"rows={sum(r['rows_enqueued'] for r in reports):>4} (2 racing enqueues)"
            )

        # One recipient the provider refuses, one whose request is accepted but never answered.
        stack.provider.set_faults(
            {
                "latency_ms": 15,
                "rules": [
                    {"action": "permanent", "match": {"recipient": "15550100003"}},
                    {"action": "accept_then_timeout", "hold_ms": 8000, "match": {"recipient": "7000000004"}},
                    {"action": "rate_limit", "times": 3, "match": {"channel": "linkedin"}},
                ],
            }
        )
        started = time.perf_counter()
        with console.status(f"{args.dispatchers} overlapping dispatcher invocations + sweeper") as status:
            invocations = []
            for n in range(args.dispatchers):
                invocations.append(
                    stack.spawn(
                        "dispatcher", EVENTS / "dispatcher-scheduled.json", log_name=f"dispatcher-{n}"
                    )
                )
                time.sleep(0.2)  # staggered like scheduler ticks, but overlapping
            sweeper = stack.spawn("sweeper", EVENTS / "sweeper-scheduled.json")
            results = [inv.finish() for inv in invocations]
            sweeper.finish()
            status.update("retrying rate-limited rows once their backoff is due")
            _drain_retries(stack)
        elapsed = time.perf_counter() - started
        _report(stack, results, elapsed)
        return 0 if verdict(stack) else 1
    finally:
        stack.stop()


def _drain_retries(stack: LocalStack) -> None:
    """Further invocations for rows put back with a backoff, or released unsent by an
    invocation that ran out of time (on a busy machine), each once the earliest row is due.
    It ends when nothing is pending, or when an invocation finds nothing it can claim (the
    verdict then names the rows left)."""
    queue = QueueRepository(stack.db)
    while True:
        pending, wait = queue.next_pending()
        if not pending:
            return
        time.sleep(max(0.0, min(wait, 60.0)) + 0.1)
        report = stack.spawn(
            "dispatcher", ROOT / "events" / "dispatcher-scheduled.json", log_name="dispatcher-retry"
        ).finish()
        if not report["counts"]["Claimed"]:
            return


def _report(stack: LocalStack, results: list[dict[str, object]], elapsed: float) -> None:
    table = Table(title="dispatcher invocations (separate OS processes, overlapping)")
    for column in (
        "#",
        "claimed",
        "sent",
        "retried",
        "failed",
        "ambiguous",
        "duplicate prevented",
        "stopped because",
    ):
        table.add_column(column)
    for n, result in enumerate(results):
        counts = result["counts"]
        assert isinstance(counts, dict)
        table.add_row(
            str(n),
            *(
                str(counts[k])
                for k in ("Claimed", "Sent", "Retried", "Failed", "Ambiguous", "DuplicatePrevented")
            ),
            str(result["stopped_because"]),
        )
    console.print(table)

    queue = QueueRepository(stack.db)
    counts = queue.status_counts()
    console.print(
        "queue: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) + f"   ({elapsed:.1f}s)"
    )
    # The recipient masked, as in the logs: `sendonce audit` shows it to an operator who asks.
    for row in queue.problem_rows():
        recipient = scrub(str(row["recipient"]))
        console.print(
            f"  [yellow]{row['status']}[/] queue {row['queue_id']} {row['channel']} {recipient} "
            f"{row['message_type']}: {row['failure_reason']}"
        )

    per_recipient = Counter((m["channel"], m["recipient"]) for m in stack.provider.ledger())
    per_message = Counter((m["channel"], m["recipient"], m["text"]) for m in stack.provider.ledger())
    histogram = Counter(per_message.values())
    received = Table(title="what the provider received")
    received.add_column("channel")
    received.add_column("recipients")
    received.add_column("messages accepted")
    received.add_column("max copies of one message")
    for channel in ("whatsapp", "messenger", "linkedin"):
        mine = {k: v for k, v in per_message.items() if k[0] == channel}
        recipients = {k[1] for k in mine}
        received.add_row(
            channel, str(len(recipients)), str(sum(mine.values())), str(max(mine.values(), default=0))
        )
    console.print(received)
    console.print(
        f"copies per message: {dict(sorted(histogram.items()))}  (recipients reached: {len(per_recipient)})"
    )


def verdict(stack: LocalStack) -> bool:
    per_message = Counter((m["channel"], m["recipient"], m["text"]) for m in stack.provider.ledger())
    duplicates = {k: v for k, v in per_message.items() if v > 1}
    counts = QueueRepository(stack.db).status_counts()
    stuck = {k: v for k, v in counts.items() if k in {"pending", "claimed", "sending"}}
    ok = not duplicates and not stuck
    if ok:
        console.print(
            "[bold green]verdict: every message reached its recipient at most once; every row is settled[/]"
        )
    else:
        twice = {
            f"{channel} {scrub(recipient)}": copies for (channel, recipient, _), copies in duplicates.items()
        }
        console.print(f"[bold red]verdict: FAILED duplicates={twice} unsettled={stuck}[/]")
    return ok


if __name__ == "__main__":
    raise SystemExit(main())
