"""Contact import from CSV (issue 8, section 6) on real Postgres: bad rows reported by line,
duplicates by normalised identity, a second import harmless, file-level errors write nothing,
seed 002's 20,028 rows in one go (untimed; the benchmark reports the time)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.aws import aws_client
from devstack.engine_testing import CONFIG
from devstack.stack import ROOT, LocalStack
from shared.campaigns import cancel_campaign, create_campaign
from shared.contacts_import import ImportFileError, import_contacts
from shared.events import CampaignSpec
from shared.storage.db import Database

pytestmark = pytest.mark.integration

BAD_ROWS_CSV = """\
Phone,Name,Company,LinkedIn URL
15550000001,Ada Lovelace,ACME,https://www.linkedin.com/in/ada-lovelace/
+1 555 000 0002,Bob,Initech,
not a number,Nobody,ACME,

+1 (555) 000-0001,Ada again,ACME,
15550000003,Cy,,
15550000004,Di,Globex,https://example.com/di
15550000005,Ed,Hooli,,surplus
"""


def campaign(
    database: Database, *, start: bool = True, body: str = "Hi {first_name|there}, {company}"
) -> uuid.UUID:
    campaign_id = uuid.uuid4()
    spec = CampaignSpec.model_validate(
        {
            "campaign_id": str(campaign_id),
            "name": "import test",
            "channel": "whatsapp",
            "senders": ["sender-1"],
            "steps": [{"message_type": "intro", "body": body}],
        }
    )
    create_campaign(database, spec, operator="test", config=CONFIG, start=start)
    return campaign_id


def counts(database: Database, campaign_id: uuid.UUID) -> tuple[int, int, int]:
    row = database.fetch_one(
        "SELECT (SELECT count(*) FROM contacts) AS contacts,"
        " (SELECT count(*) FROM campaign_contacts WHERE campaign_id = %(c)s) AS members,"
        " (SELECT count(*) FROM send_queue WHERE campaign_id = %(c)s) AS queued",
        {"c": campaign_id},
    )
    assert row is not None
    return int(row["contacts"]), int(row["members"]), int(row["queued"])


def test_a_csv_with_bad_rows_reports_them_by_line_and_imports_the_rest(database: Database) -> None:
    campaign_id = campaign(database)
    report = import_contacts(database, campaign_id, BAD_ROWS_CSV.encode(), config=CONFIG)
    assert (report.rows, report.contacts_added, report.rows_queued) == (7, 2, 2)
    by_line = {p.line: p.reason for p in report.problems}
    assert by_line == {
        4: "unexpected_character",
        6: "duplicate",
        7: "missing_variable",
        8: "invalid_linkedin_url",
        9: "extra_columns",
    }
    assert report.problems[[p.line for p in report.problems].index(6)].detail == "same contact as line 2"
    assert (report.invalid_rows, report.duplicate_rows, report.rejected) == (3, 1, 1)
    texts = {
        r["address"]: (r["body"], r["fields"], r["linkedin_profile_url"])
        for r in database.fetch_all(
            "SELECT c.address, q.body, c.fields, c.linkedin_profile_url FROM send_queue q"
            " JOIN contacts c ON c.id = q.contact_id"
        )
    }
    assert texts == {
        "15550000001": ("Hi Ada, ACME", {"company": "ACME"}, "https://www.linkedin.com/in/ada-lovelace/"),
        "15550000002": ("Hi Bob, Initech", {"company": "Initech"}, None),
    }

    before = counts(database, campaign_id)
    again = import_contacts(database, campaign_id, BAD_ROWS_CSV.encode(), config=CONFIG)
    assert (again.contacts_added, again.already_members, again.rows_queued) == (0, 2, 0)
    assert counts(database, campaign_id) == before, "importing the same file twice is harmless"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"name,company\nAda,ACME\n", "no address column"),
        (b"phone,Phone\n1,2\n", "repeats"),
        ("phone,name\n15550000001,Zo\u00eb\n".encode("utf-16"), "not UTF-8"),
    ],
)
def test_a_file_level_error_writes_nothing(database: Database, data: bytes, message: str) -> None:
    campaign_id = campaign(database)
    before = counts(database, campaign_id)
    with pytest.raises(ImportFileError, match=message):
        import_contacts(database, campaign_id, data, config=CONFIG)
    assert counts(database, campaign_id) == before


def test_an_unknown_or_cancelled_campaign_is_a_file_level_error(database: Database) -> None:
    with pytest.raises(ImportFileError, match="no campaign"):
        import_contacts(database, uuid.uuid4(), b"phone\n15550000001\n", config=CONFIG)
    campaign_id = campaign(database)
    cancel_campaign(database, campaign_id, operator="test")
    before = counts(database, campaign_id)
    with pytest.raises(ImportFileError, match="cancelled"):
        import_contacts(database, campaign_id, b"phone\n15550000001\n", config=CONFIG)
    assert counts(database, campaign_id) == before


def seed_002_csv(rows: int) -> bytes:
    lines = ["phone,first_name,company"]
    lines += [f"+1 555 {n // 10000:03d} {n % 10000:04d},Name{n},Company {n % 97}" for n in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def test_seed_002_sized_import_of_20028_rows(database: Database) -> None:
    campaign_id = campaign(database, body="{~Hi|Hello} {first_name}, a word for {company}")
    seen: list[tuple[str, int, int]] = []
    report = import_contacts(
        database,
        campaign_id,
        seed_002_csv(20_028),
        config=CONFIG,
        progress=lambda stage, done, total: seen.append((stage, done, total)),
    )
    assert (report.rows, report.contacts_added, report.rows_queued, report.problems) == (
        20_028,
        20_028,
        20_028,
        [],
    )
    assert counts(database, campaign_id)[1:] == (20_028, 20_028)
    writes = [done for stage, done, _ in seen if stage == "write"]
    assert writes == sorted(writes) and writes[-1] == 20_028, "the progress bar reaches the end"
    sample = database.fetch_one(
        "SELECT q.body FROM send_queue q JOIN contacts c ON c.id = q.contact_id WHERE c.address = '15550000042'"
    )
    assert sample is not None and sample["body"].split(" ", 1)[1] == "Name42, a word for Company 42"


# --- the operator's commands, as processes ---------------------------------------------------------


@pytest.fixture(scope="module")
def stack(pg_server: Any) -> Iterator[LocalStack]:
    with LocalStack(database_url=pg_server.admin_url) as running:
        yield running


sendonce = LocalStack.cli


def test_contacts_import_and_suppress_commands(stack: LocalStack, tmp_path: Path) -> None:
    campaign_id = campaign(stack.db, body="Hi {first_name|there}, {company|}!")
    csv_file = tmp_path / "contacts.csv"
    csv_file.write_text(BAD_ROWS_CSV)
    first = sendonce(stack, "contacts", "import", str(csv_file), "--campaign", str(campaign_id), "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert (report["contacts_added"], report["invalid_rows"], report["duplicate_rows"]) == (3, 3, 1)
    second = json.loads(
        sendonce(stack, "contacts", "import", str(csv_file), "--campaign", str(campaign_id), "--json").stdout
    )
    assert (second["contacts_added"], second["already_members"]) == (0, 3)

    added = sendonce(
        stack, "suppress", "add", "--channel", "whatsapp", "--address", "+1 555 000 0002",
        "--reason", "asked not to be contacted", "--operator", "ops",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = json.loads(sendonce(stack, "suppress", "list", "--json").stdout)
    assert [(s["address"], s["reason"]) for s in listed] == [("15550000002", "asked not to be contacted")]
    audit = json.loads(sendonce(stack, "audit", "--contact", "15550000002", "--json").stdout)
    assert audit["suppressions"][0]["created_by"] == "operator:ops"
    assert [r["status"] for r in audit["queue"]] == ["cancelled"]
    missing = sendonce(
        stack, "contacts", "import", str(tmp_path / "nope.csv"), "--campaign", str(campaign_id)
    )
    assert missing.returncode != 0


# --- the event path: a CSV object in S3 (moto) ----------------------------------------------------

SAMPLE_CAMPAIGN = uuid.UUID("5d2e8f3a-1c4b-4e7d-9a6f-0b3c2d1e4f52")  # the campaign events/contacts-* name


@pytest.fixture
def deployed_stack(pg_server: Any) -> Iterator[LocalStack]:
    """Handlers configured as Lambda configures them: the database URL comes from its secret,
    so the IAM test sees the contacts function read it (tests/infra/test_iam.py)."""
    with LocalStack(database_url=pg_server.admin_url, database_from_secret=True) as running:
        yield running


def test_the_contacts_function_imports_the_s3_object_its_event_names(deployed_stack: LocalStack) -> None:
    """Both sample events through the real handler, in its own process, against moto S3: the
    operator's event and S3's ObjectCreated notification (whose key is URL-encoded)."""
    stack = deployed_stack
    spec = CampaignSpec.model_validate(
        {
            "campaign_id": str(SAMPLE_CAMPAIGN),
            "name": "S3 import",
            "channel": "whatsapp",
            "senders": ["s3-sender"],
            "steps": [{"message_type": "intro", "body": "Hi {first_name|there}"}],
        }
    )
    create_campaign(stack.db, spec, operator="test", config=CONFIG, start=True)
    s3 = aws_client("s3", stack.moto.endpoint)
    bucket = "sendonce-contact-imports"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    manual = json.loads((ROOT / "events" / "contacts-import.json").read_text())
    s3.put_object(
        Bucket=bucket, Key=manual["key"], Body=b"phone,first_name\n(555) 000-0101,Ana\n15550000102,Ben\n"
    )
    s3.put_object(
        Bucket=bucket,
        Key=f"contacts/{SAMPLE_CAMPAIGN}/spring list 2.csv",
        Body=b"phone,first_name\n15550000102,Ben\n15550000103,Cat\nbad,Row\n",
    )
    first = stack.spawn("contacts", ROOT / "events" / "contacts-import.json").finish()
    [report] = first["imports"]
    assert (report["contacts_added"], report["rows_queued"]) == (2, 2), "(555) 000-0101 read with region US"
    second = stack.spawn("contacts", ROOT / "events" / "contacts-import-s3.json").finish()
    [report] = second["imports"]
    assert (report["contacts_added"], report["already_members"], report["invalid_rows"]) == (1, 1, 1)
    assert [p["line"] for p in report["problems"]] == [4]
    assert counts(stack.db, SAMPLE_CAMPAIGN)[1:] == (3, 3)
