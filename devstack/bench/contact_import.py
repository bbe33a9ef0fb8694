"""The contact-import scenario: seed 002's 20,028 contacts imported from a CSV into a started
campaign with a personalised step, through the real ``shared.contacts_import`` (read and
normalise every row, render the step per contact, add the members and queue step 1, in one
transaction), on an embedded Postgres with fsync on. Then the same file again, which must add
nothing. Target: the first import under 60 s."""

from __future__ import annotations

import argparse
import time
import uuid
from dataclasses import dataclass

from devstack.bench.common import console, summary, write_results
from devstack.postgres import EmbeddedPostgres
from shared.campaigns import create_campaign
from shared.contacts_import import import_contacts
from shared.events import CampaignSpec
from shared.sequences import EngineConfig
from shared.storage.db import Database
from shared.storage.migrate import migrate

TARGET_SECONDS = 60.0


@dataclass
class ImportResult:
    rows: int
    first_seconds: float
    rows_per_second: float
    second_seconds: float
    contacts_added: int
    rows_queued: int
    second_added: int


def csv_rows(rows: int) -> bytes:
    lines = ["phone,name,company,linkedin_url"]
    lines += [
        f"+1 555 {n // 10000:03d} {n % 10000:04d},Name{n} Surname,Company {n % 97},"
        f"https://www.linkedin.com/in/person-{n}/"
        for n in range(rows)
    ]
    return ("\n".join(lines) + "\n").encode()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--import-rows", type=int, default=20_028, help="contact-import: CSV rows")


def run(args: argparse.Namespace) -> int:
    data = csv_rows(args.import_rows)
    config = EngineConfig()
    with EmbeddedPostgres(durable=True) as server:
        db = Database(server.create_database(f"import_{uuid.uuid4().hex[:6]}"), max_size=2)
        try:
            migrate(db)
            campaign_id = uuid.uuid4()
            spec = CampaignSpec.model_validate(
                {
                    "campaign_id": str(campaign_id),
                    "name": "seed 002 import",
                    "channel": "whatsapp",
                    "senders": ["bench-sender"],
                    "steps": [
                        {
                            "message_type": "intro",
                            "body": "{~Hi|Hello} {first_name|there}, a word for {company}",
                        },
                        {
                            "message_type": "follow_up",
                            "body": "{first_name|Hi}, any thoughts?",
                            "delay_seconds": 86400,
                        },
                    ],
                }
            )
            create_campaign(db, spec, operator="bench", config=config, start=True)
            with console.status(f"contact-import: importing {args.import_rows:,} rows"):
                began = time.perf_counter()
                first = import_contacts(db, campaign_id, data, config=config)
                first_seconds = time.perf_counter() - began
                began = time.perf_counter()
                second = import_contacts(db, campaign_id, data, config=config)
                second_seconds = time.perf_counter() - began
        finally:
            db.close()
    result = ImportResult(
        rows=first.rows,
        first_seconds=round(first_seconds, 2),
        rows_per_second=round(first.rows / first_seconds, 1),
        second_seconds=round(second_seconds, 2),
        contacts_added=first.contacts_added,
        rows_queued=first.rows_queued,
        second_added=second.contacts_added,
    )
    write_results("contact-import", result)
    ok = first_seconds < TARGET_SECONDS and result.second_added == 0 and first.rows_queued == args.import_rows
    summary(
        "contact-import",
        f"{result.rows:,} rows in {result.first_seconds:g} s ({result.rows_per_second:,.0f} rows/s), "
        f"{result.rows_queued:,} step-1 rows queued; the same file again {result.second_seconds:g} s, "
        f"{result.second_added} added ({'within' if ok else '[red]over[/]'} the {TARGET_SECONDS:g} s target)",
    )
    return 0 if ok else 1
