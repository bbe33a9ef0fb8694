"""The absence scenario (issue 11): what policy ``hold`` leaves to an operator, and what
``resend_if_silent`` resolves and at what risk, under faults.

Faults: 3% of provider requests answered 500 before acceptance, 2% accepted and then answered
500, 2% of status webhooks lost (the rest delayed 50-1,500 ms, 5% delivered twice), and one
dispatcher process SIGKILLed mid-batch in every round. Dispatchers are real handler processes;
webhooks are signed and POSTed by the fake provider to the webhook logic on a loopback port.

Each round: overlapping dispatchers drain the queue (one killed), every scheduled webhook is
delivered or lost (the grace period G has passed), leases are moved past their end, and the
sweeper runs under the policy. Rounds repeat until nothing is pending or in flight.

Reported per policy: held unknowns as a share of messages; duplicates (messages the provider
accepted more than once), split into those whose first copy was accepted with every webhook
lost (the policy's stated risk) and any other (a defect); false ``sent`` (a sent row whose
provider id the provider never issued to that recipient).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from devstack.aws import aws_client
from devstack.bench.common import DISPATCH_EVENT, console, summary, write_results
from devstack.engine_testing import META_SECRET, UNIPILE_SECRET, webhook_deps
from devstack.fake_webhooks import WebhookConfig, WebhookEmitter, WebhookReceiver
from devstack.stack import LocalStack
from devstack.testing import enqueue_contacts, expire_leases, outlive_claims
from shared.idempotency import SendGuard
from shared.queue import QueueRepository
from shared.sweeper import SweepDeps, sweep

POLICIES = ("hold", "resend_if_silent")
HANG_GUARD_SECONDS = 600


@dataclass
class AbsenceResult:
    policy: str
    messages: int
    rounds: int
    held_unknown: int
    held_share_percent: float
    requeued_on_absence: int
    duplicates: int
    duplicates_first_copy_webhooks_all_lost: int
    duplicates_other: int
    accepted_with_all_webhooks_lost: int
    false_sent: int
    sent: int
    failed: int
    held_because: dict[str, int]
    faults_fired: dict[str, int]
    webhooks: dict[str, int]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--absence-messages", type=int, default=1500)
    parser.add_argument("--absence-dispatchers", type=int, default=3)
    parser.add_argument("--absence-seed", type=int, default=11)


def _enqueue(stack: LocalStack, messages: int) -> None:
    third = messages // 3
    for sender in range(3):
        enqueue_contacts(
            stack.db, "whatsapp", [f"1555{sender}{i:06d}" for i in range(third // 3)], sender=f"wa-{sender}"
        )
    enqueue_contacts(stack.db, "messenger", [f"psid-{i}" for i in range(third)], sender="page-1")
    enqueue_contacts(
        stack.db,
        "linkedin",
        [f"ACoAA{i:05d}" for i in range(messages - third - 3 * (third // 3))],
        sender="li-1",
    )


def _drain(emitter: WebhookEmitter) -> None:
    ceiling = time.monotonic() + HANG_GUARD_SECONDS
    while emitter.pending():
        if time.monotonic() > ceiling:
            raise TimeoutError(f"webhooks stuck: {dict(emitter.counts)}")
        time.sleep(0.05)


def _dispatch_round(stack: LocalStack, dispatchers: int) -> None:
    """Overlapping dispatcher processes; one is SIGKILLed once the provider has seen progress."""
    before = len(stack.fake.ledger())
    invocations = [
        stack.spawn("dispatcher", DISPATCH_EVENT, timeout_seconds=300, log_name="absence")
        for _ in range(dispatchers)
    ]
    victim = invocations[0]
    ceiling = time.monotonic() + HANG_GUARD_SECONDS
    while victim.process.poll() is None and len(stack.fake.ledger()) < before + 20:
        if time.monotonic() > ceiling:
            break
        time.sleep(0.01)
    victim.kill()
    for invocation in invocations[1:]:
        try:
            invocation.finish(timeout=HANG_GUARD_SECONDS)
        except RuntimeError as exc:
            console.print(f"[yellow]a dispatcher failed: {exc}[/]")


def _unsettled(stack: LocalStack) -> int:
    row = stack.db.fetch_one(
        "SELECT count(*) AS n FROM send_queue WHERE status IN ('pending', 'claimed', 'sending')"
    )
    return int(row["n"]) if row else 0


def run_policy(policy: str, args: argparse.Namespace) -> AbsenceResult:
    overrides: dict[str, Any] = {
        "send_concurrency": 4,
        "batch_size": 25,
        "unknown_policy_whatsapp": policy,
        "unknown_policy_messenger": policy,
        "unknown_policy_linkedin": policy,
        # Each sweep runs after every scheduled webhook was delivered or lost: G has passed.
        "absence_grace_seconds": 0,
    }
    with LocalStack(settings_overrides=overrides) as stack:
        assert stack.settings is not None and stack.aws is not None
        receiver = WebhookReceiver(webhook_deps(stack.db))
        url = receiver.start()
        emitter = stack.fake.send_webhooks(
            WebhookConfig(
                url=url,
                meta_app_secret=META_SECRET,
                unipile_secret=UNIPILE_SECRET,
                delay_ms_min=50,
                delay_ms_max=1500,
                duplicate_probability=0.05,
                loss_probability=0.02,
                seed=args.absence_seed,
            )
        )
        assert emitter is not None
        stack.fake.set_faults(
            {
                "seed": args.absence_seed,
                "rules": [
                    {"action": "server_error", "probability": 0.03},
                    # Of the requests left: 2% of all.
                    {"action": "accept_then_5xx", "probability": 0.02 / 0.97},
                ],
            }
        )
        _enqueue(stack, args.absence_messages)
        messages = int(stack.db.fetch_one("SELECT count(*) AS n FROM send_queue")["n"])  # type: ignore[index]
        guard = SendGuard.for_table(
            stack.aws.idempotency_table,
            stack.settings.dedupe_window_seconds,
            boto3_client=aws_client("dynamodb", stack.moto.endpoint),
        )
        deps = SweepDeps(stack.settings, QueueRepository(stack.db), guard, sqs=None)
        requeued = 0
        rounds = 0
        with console.status(f"absence ({policy}): dispatch rounds"):
            while True:
                rounds += 1
                _dispatch_round(stack, args.absence_dispatchers)
                _drain(emitter)
                expire_leases(stack.db)
                outlive_claims(stack.db)
                report = sweep(deps)
                requeued += report.unknown_resent_on_absence
                if rounds >= 12 or (
                    _unsettled(stack) == 0
                    and report.unknown_resent_on_absence == 0
                    and report.returned_to_pending == 0
                ):
                    break
                # Backoffs of retried rows are the clock's business, not the measurement's.
                with stack.db.connection() as conn:
                    conn.execute("UPDATE send_queue SET scheduled_for = now() WHERE status = 'pending'")
        _drain(emitter)
        result = _measure(stack, emitter, policy, messages, rounds, requeued)
        stack.fake.send_webhooks(None)
        receiver.stop()
        return result


def _measure(
    stack: LocalStack, emitter: WebhookEmitter, policy: str, messages: int, rounds: int, requeued: int
) -> AbsenceResult:
    ledger = stack.fake.ledger()
    copies: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for entry in ledger:
        copies.setdefault((entry["channel"], entry["recipient"], entry["text"]), []).append(entry)
    all_lost = {
        e["provider_message_id"]
        for e in ledger
        if emitter.delivered[e["provider_message_id"]] == 0 and emitter.lost[e["provider_message_id"]] > 0
    }
    duplicates = risk = 0
    for entries in copies.values():
        if len(entries) > 1:
            duplicates += len(entries) - 1
            first = min(entries, key=lambda e: e["seq"])
            if first["provider_message_id"] in all_lost:
                risk += len(entries) - 1
    issued = {(e["channel"], e["recipient"], e["provider_message_id"]) for e in ledger}
    sent_rows = stack.db.fetch_all(
        "SELECT l.channel::text AS channel, l.recipient, l.provider_message_id FROM message_ledger l"
    )
    false_sent = sum(
        1 for r in sent_rows if (r["channel"], r["recipient"], r["provider_message_id"]) not in issued
    )
    counts = Counter(
        {
            r["status"]: r["n"]
            for r in stack.db.fetch_all(
                "SELECT status::text AS status, count(*) AS n FROM send_queue GROUP BY 1"
            )
        }
    )
    held = counts["unknown"]
    reasons = Counter(
        ",".join(r["check"]["held_because"]) if r["check"] else "not judged"
        for r in stack.db.fetch_all("SELECT absence_check AS check FROM send_queue WHERE status = 'unknown'")
    )
    return AbsenceResult(
        policy=policy,
        messages=messages,
        rounds=rounds,
        held_unknown=held,
        held_share_percent=round(100 * held / messages, 2),
        requeued_on_absence=requeued,
        duplicates=duplicates,
        duplicates_first_copy_webhooks_all_lost=risk,
        duplicates_other=duplicates - risk,
        accepted_with_all_webhooks_lost=len(all_lost),
        false_sent=false_sent,
        sent=counts["sent"],
        failed=counts["failed"],
        held_because=dict(reasons),
        faults_fired=dict(stack.fake.stats().get("faults_fired", {})),
        webhooks=dict(emitter.counts),
    )


def run(args: argparse.Namespace) -> int:
    results = [run_policy(policy, args) for policy in POLICIES]
    for r in results:
        summary(
            "absence",
            f"{r.policy}: {r.messages} messages, held unknown {r.held_unknown} ({r.held_share_percent}%), "
            f"requeued on absence {r.requeued_on_absence}, duplicates {r.duplicates} "
            f"(first copy's webhooks all lost: {r.duplicates_first_copy_webhooks_all_lost}; other: "
            f"{r.duplicates_other}), accepted with every webhook lost {r.accepted_with_all_webhooks_lost}, "
            f"false sent {r.false_sent}; held because {r.held_because}",
        )
    write_results("absence", results)
    silent = results[-1]
    ok = (
        all(r.false_sent == 0 and r.duplicates_other == 0 for r in results)
        and results[0].duplicates == 0
        and silent.held_share_percent <= 0.5
        and silent.duplicates <= silent.accepted_with_all_webhooks_lost
    )
    return 0 if ok else 1
