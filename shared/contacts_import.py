"""Contact import: a CSV file into an existing campaign (``sendonce contacts import``, or the
control function's ``contacts.import`` for a file in S3).

Columns (a header row is required; names are case-insensitive):

    address                 phone number, PSID or provider id (also: phone, psid, provider_id)
    name                    display name (also: display_name)
    linkedin_url            LinkedIn profile URL (also: linkedin_profile_url, linkedin)
    anything else           a custom field a step's template can read ({company})

Every row is read and checked first (address normalised by ``shared.addresses``, the same
identity the enqueue uses); invalid rows and rows that repeat an earlier row's identity are
reported by line number and skipped. Then the whole file is written in one transaction, in
chunks, through the enqueue's own steps (suppression, personalisation, membership, step 1), so
importing the same file twice adds nothing the second time. A file-level problem (not UTF-8,
no header, no address column, a repeated column, an unknown or cancelled campaign) raises
``ImportFileError`` before anything is written.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus
from uuid import UUID

from pydantic import BaseModel, ValidationError

from shared import admission
from shared.addresses import InvalidAddressError, mask_address, normalise_address
from shared.content import StepTemplate
from shared.enqueue import add_members, hold_campaign, start_members, stored_region
from shared.events import ContactImportEvent, ContactImportRequest, EnqueueContact
from shared.pacing import Action
from shared.providers.outcome import Channel
from shared.sequences import EngineConfig
from shared.storage import sql
from shared.storage.db import Database

__all__ = ["ImportFileError", "ImportReport", "RowProblem", "import_contacts", "import_from_s3", "parse_csv"]

# Rows per chunk written inside the one transaction: bounds each statement's arrays.
CHUNK = 2000
MAX_REPORTED_ROWS = 200
# A file this large belongs in several imports (the whole file is held in memory).
MAX_FILE_BYTES = 64 * 1024 * 1024

_ADDRESS = ("address", "phone", "phone_number", "psid", "provider_id")
_NAME = ("name", "display_name", "full_name")
_LINKEDIN = ("linkedin_url", "linkedin_profile_url", "linkedin")
_LINKEDIN_URL = re.compile(
    r"^https?://([a-z]{2,3}\.)?(www\.)?linkedin\.com/in/[^/?#\s]+/?([?#].*)?$", re.IGNORECASE
)

Progress = Callable[[str, int, int], None]


class ImportFileError(ValueError):
    """The file as a whole cannot be imported; nothing was written."""


class RowProblem(BaseModel):
    line: int
    reason: str
    detail: str


class ImportReport(BaseModel):
    campaign_id: str
    rows: int
    contacts_added: int
    already_members: int
    rows_queued: int
    invalid_rows: int
    duplicate_rows: int
    suppressed: int
    rejected: int
    rejected_by_reason: dict[str, int]
    # The first MAX_REPORTED_ROWS problems, by line number (invalid, duplicate, rejected).
    problems: list[RowProblem]


@dataclass
class ParsedFile:
    contacts: list[EnqueueContact] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # CSV line of each contact
    addresses: list[str] = field(default_factory=list)  # stored (normalised) address of each contact
    invalid: list[RowProblem] = field(default_factory=list)
    duplicates: list[RowProblem] = field(default_factory=list)
    rows: int = 0


def _column(header: list[str], names: Iterable[str]) -> int | None:
    for name in names:
        if name in header:
            return header.index(name)
    return None


def _header_key(name: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", name.strip().lstrip("\ufeff").lower()).strip("_")


def parse_csv(
    text: str, channel: Channel, region: str | None, *, progress: Progress | None = None
) -> ParsedFile:
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(text[:8192], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    try:
        raw_header = next(reader)
    except StopIteration:
        raise ImportFileError("the file is empty: a header row naming the columns is required") from None
    except csv.Error as exc:
        raise ImportFileError(f"line 1: not readable as CSV ({exc})") from None
    header = [_header_key(h) for h in raw_header]
    repeated = sorted({h for h in header if header.count(h) > 1 and h})
    if repeated:
        raise ImportFileError(f"the header repeats column(s) {', '.join(repeated)}")
    address_at = _column(header, _ADDRESS)
    if address_at is None:
        raise ImportFileError(
            f"no address column: the header must name one of {', '.join(_ADDRESS)} "
            f"(found {', '.join(header)})"
        )
    name_at, linkedin_at = _column(header, _NAME), _column(header, _LINKEDIN)
    custom = [(i, h) for i, h in enumerate(header) if h and i not in (address_at, name_at, linkedin_at)]
    total = text.count("\n")
    parsed = ParsedFile()
    first_line: dict[str, int] = {}
    try:
        for row in reader:
            line = reader.line_num
            parsed.rows += 1
            if progress is not None and parsed.rows % 1000 == 0:
                progress("read", parsed.rows, total)
            if not any(cell.strip() for cell in row):
                parsed.rows -= 1
                continue
            if len(row) > len(header):
                parsed.invalid.append(
                    RowProblem(line=line, reason="extra_columns", detail=f"{len(row)} cells")
                )
                continue
            cells = row + [""] * (len(header) - len(row))
            url = cells[linkedin_at].strip() if linkedin_at is not None else ""
            if url and not _LINKEDIN_URL.match(url):
                parsed.invalid.append(
                    RowProblem(
                        line=line, reason="invalid_linkedin_url", detail="not a linkedin.com/in/ profile URL"
                    )
                )
                continue
            try:
                contact = EnqueueContact(
                    address=cells[address_at],
                    display_name=cells[name_at].strip() if name_at is not None else "",
                    fields={h: cells[i].strip() for i, h in custom if cells[i].strip()},
                    linkedin_profile_url=url or None,
                )
            except ValidationError as exc:
                detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
                parsed.invalid.append(RowProblem(line=line, reason="invalid_row", detail=detail))
                continue
            try:
                address = normalise_address(channel, contact.address, region)
            except InvalidAddressError as exc:
                parsed.invalid.append(
                    RowProblem(
                        line=line,
                        reason=exc.problem.value,
                        detail=f"{mask_address(channel, contact.address)}: {exc.detail}",
                    )
                )
                continue
            if address in first_line:
                parsed.duplicates.append(
                    RowProblem(
                        line=line, reason="duplicate", detail=f"same contact as line {first_line[address]}"
                    )
                )
                continue
            first_line[address] = line
            parsed.contacts.append(contact)
            parsed.lines.append(line)
            parsed.addresses.append(address)
    except csv.Error as exc:
        raise ImportFileError(f"line {reader.line_num}: not readable as CSV ({exc})") from None
    if progress is not None:
        progress("read", parsed.rows, parsed.rows)
    return parsed


def decode(data: bytes) -> str:
    if len(data) > MAX_FILE_BYTES:
        raise ImportFileError(f"the file is {len(data)} bytes; at most {MAX_FILE_BYTES} are imported at once")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"the file is not UTF-8 (byte {exc.start}); save it as CSV UTF-8") from None


def import_contacts(
    db: Database,
    campaign_id: UUID,
    data: bytes,
    *,
    config: EngineConfig,
    region: str | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    text = decode(data)
    campaign_row = db.fetch_one(sql.CAMPAIGN_ROW, {"campaign_id": campaign_id})
    if campaign_row is None:
        raise ImportFileError(f"no campaign {campaign_id}; nothing was imported")
    channel = Channel(campaign_row["channel"])
    pool = db.fetch_all(sql.CAMPAIGN_POOL, {"campaign_id": campaign_id})
    region = stored_region(db, channel, pool[0]["provider_account_id"], region) if pool else region
    parsed = parse_csv(text, channel, region, progress=progress)

    added = queued = members = suppressed = 0
    rejected: dict[str, int] = {}
    problems = list(parsed.invalid) + list(parsed.duplicates)
    order = sorted(range(len(parsed.addresses)), key=lambda i: parsed.addresses[i])
    with db.connection() as conn, conn.transaction():
        campaign = hold_campaign(conn, campaign_id)
        if campaign["status"] == "cancelled":
            raise ImportFileError(f"campaign {campaign_id} is cancelled; nothing was imported")
        steps = [
            StepTemplate(r["body"], Action(r["action"]))
            for r in conn.execute(sql.CAMPAIGN_STEPS, {"campaign_id": campaign_id}).fetchall()
        ]
        sender_ids = [p["id"] for p in pool]
        for start in range(0, len(order), CHUNK):
            chunk = order[start : start + CHUNK]
            index_of = {parsed.addresses[i]: i for i in chunk}
            admitted = admission.admit(
                conn,
                campaign_id=campaign_id,
                channel=channel,
                sender_ids=sender_ids,
                steps=steps,
                profiles=admission.profiles_of(parsed.contacts, index_of),
                origin={a: parsed.lines[i] for a, i in index_of.items()},
                windows=config.channel_windows,
            )
            existing = len(admitted.admitted) - len(admitted.rendered)
            # Only new members: existing ones keep their texts and their sequences, and locking
            # them again would write every row of a file imported twice.
            joining = {a: admitted.admitted[a] for a in admitted.rendered}
            ids = add_members(conn, campaign_id, channel, joining, admitted.rendered) if joining else []
            admission.store(conn, channel, admitted)
            result = start_members(conn, campaign, config, ids, "import")
            added += len(admitted.rendered)
            members += existing
            queued += result.rows_queued
            suppressed += admitted.suppressed
            for reason, n in admitted.rejected_by_reason.items():
                rejected[reason] = rejected.get(reason, 0) + n
            problems.extend(
                RowProblem(line=r.index, reason=r.reason, detail=r.detail) for r in admitted.rejected_examples
            )
            if progress is not None:
                progress("write", min(start + CHUNK, len(order)), len(order))
    problems.sort(key=lambda p: p.line)
    return ImportReport(
        campaign_id=str(campaign_id),
        rows=parsed.rows,
        contacts_added=added,
        already_members=members,
        rows_queued=queued,
        invalid_rows=len(parsed.invalid),
        duplicate_rows=len(parsed.duplicates),
        suppressed=suppressed,
        rejected=sum(rejected.values()),
        rejected_by_reason=rejected,
        problems=problems[:MAX_REPORTED_ROWS],
    )


# --- the event path: a CSV object in S3 ------------------------------------------------------------

_KEY = re.compile(r"^contacts/(?P<campaign>[0-9a-fA-F-]{36})/[^/]+$")


class S3ImportReport(BaseModel):
    imports: list[dict[str, Any]]


def _objects(event: ContactImportEvent) -> list[tuple[str, str, UUID, str | None]]:
    root = event.root
    if isinstance(root, ContactImportRequest):
        return [(root.bucket, root.key, root.campaign_id, root.sender_default_region)]
    found: list[tuple[str, str, UUID, str | None]] = []
    for record in root.Records:
        key = unquote_plus(record.s3.object.key)  # S3 notifications URL-encode the key
        match = _KEY.match(key)
        if match is None:
            raise ImportFileError(
                f"object key {key!r} is not contacts/<campaign id>/<file>.csv; nothing was imported"
            )
        found.append((record.s3.bucket.name, key, UUID(match["campaign"]), None))
    return found


def import_from_s3(
    db: Database, s3: Any, event: ContactImportEvent, *, config: EngineConfig
) -> S3ImportReport:
    """Each object the event names, read whole (at most ``MAX_FILE_BYTES``) and imported. ``s3``
    is a boto3 S3 client."""
    reports = []
    for bucket, key, campaign_id, region in _objects(event):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        data = body.read(MAX_FILE_BYTES + 1)
        report = import_contacts(db, campaign_id, data, config=config, region=region)
        reports.append({"bucket": bucket, "key": key, **report.model_dump(mode="json")})
    return S3ImportReport(imports=reports)
