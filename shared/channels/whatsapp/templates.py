"""WhatsApp message templates: synced from Graph and checked at enqueue.

``GET /{version}/{waba-id}/message_templates`` lists a WhatsApp Business Account's templates
with ``name``, ``language``, ``status`` (APPROVED, PENDING, REJECTED, PAUSED, DISABLED, ...),
``category`` and ``components`` (Meta's OpenAPI, ``/{Version}/{WABA-ID}/message_templates``,
and https://developers.facebook.com/docs/graph-api/reference/whats-app-business-account/message_templates/).
Paged with ``paging.cursors.after`` / ``paging.next``. Only APPROVED templates can be sent
(132015 "Template is Paused", 132016 "Template is Disabled", 132001 "Template does not exist").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
from psycopg.rows import DictRow
from pydantic import BaseModel, Field

from shared.channels.whatsapp.content import Template
from shared.providers.http import json_body
from shared.providers.secrets import TokenUnavailableError
from shared.storage import sql
from shared.storage.db import Database

_POSITIONAL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
MAX_PAGES = 50


class TemplateSyncError(OSError):
    """Graph did not answer with a template list; the cache is left as it was."""


def parameter_count(text: object) -> int:
    """Distinct ``{{1}}`` / ``{{name}}`` placeholders in a component's text."""
    return len(set(_POSITIONAL.findall(text))) if isinstance(text, str) else 0


def summarise(template: Mapping[str, Any]) -> dict[str, Any]:
    body_parameters = header_parameters = 0
    header_format: str | None = None
    buttons: list[dict[str, Any]] = []
    for component in template.get("components") or []:
        if not isinstance(component, Mapping):
            continue
        kind = str(component.get("type", "")).upper()
        if kind == "BODY":
            body_parameters = parameter_count(component.get("text"))
        elif kind == "HEADER":
            header_format = str(component.get("format", "TEXT")).lower()
            header_parameters = parameter_count(component.get("text")) if header_format == "text" else 1
        elif kind == "BUTTONS":
            for index, button in enumerate(component.get("buttons") or []):
                if isinstance(button, Mapping):
                    buttons.append(
                        {
                            "index": index,
                            "type": str(button.get("type", "")).lower(),
                            "dynamic": parameter_count(button.get("url")) > 0,
                        }
                    )
    return {
        "name": str(template.get("name", "")),
        "language": str(template.get("language", "")),
        "status": str(template.get("status", "")).upper(),
        "category": template.get("category"),
        "template_id": template.get("id"),
        "body_parameters": body_parameters,
        "header_format": header_format,
        "header_parameters": header_parameters,
        "buttons": buttons,
        "components": template.get("components") or [],
    }


def fetch_templates(
    client: httpx.Client, base_url: str, version: str, business_account_id: str, token: Callable[[], str]
) -> list[dict[str, Any]]:
    url: str | None = f"{base_url.rstrip('/')}/{version}/{business_account_id}/message_templates"
    params: dict[str, str] | None = {"limit": "100"}
    found: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        if url is None:
            break
        try:
            response = client.get(url, params=params, headers={"Authorization": f"Bearer {token()}"})
        except httpx.HTTPError as exc:
            raise TemplateSyncError(f"template sync failed: {type(exc).__name__}") from exc
        data = json_body(response)
        listed = data.get("data") if isinstance(data, Mapping) else None
        if response.status_code != 200 or not isinstance(data, Mapping) or not isinstance(listed, list):
            raise TemplateSyncError(f"template sync answered HTTP {response.status_code}")
        found.extend(summarise(t) for t in listed if isinstance(t, Mapping))
        paging = data.get("paging")
        next_url = paging.get("next") if isinstance(paging, Mapping) else None
        url, params = (next_url, None) if isinstance(next_url, str) and next_url else (None, None)
    return found


def sync_templates(
    db: Database,
    client: httpx.Client,
    *,
    base_url: str,
    version: str,
    business_account_id: str,
    phone_number_ids: Sequence[str],
    token: Callable[[], str],
) -> int:
    """Replace the cached templates of one WABA and tie its phone numbers to it. A failed
    fetch changes nothing."""
    templates = [
        t for t in fetch_templates(client, base_url, version, business_account_id, token) if t["name"]
    ]
    with db.connection() as conn, conn.transaction():
        conn.execute(sql.DELETE_WHATSAPP_TEMPLATES, {"business_account_id": business_account_id})
        conn.execute(
            sql.INSERT_WHATSAPP_TEMPLATES,
            {
                "business_account_id": business_account_id,
                "names": [t["name"] for t in templates],
                "languages": [t["language"] for t in templates],
                "statuses": [t["status"] for t in templates],
                "categories": [t["category"] for t in templates],
                "template_ids": [t["template_id"] for t in templates],
                "body_parameters": [t["body_parameters"] for t in templates],
                "header_formats": [t["header_format"] for t in templates],
                "header_parameters": [t["header_parameters"] for t in templates],
                "buttons": [json.dumps(t["buttons"]) for t in templates],
                "components": [json.dumps(t["components"]) for t in templates],
            },
        )
        conn.execute(
            sql.SET_SENDER_BUSINESS_ACCOUNT,
            {"business_account_id": business_account_id, "provider_account_ids": list(phone_number_ids)},
        )
        conn.execute(
            sql.RECORD_TEMPLATE_SYNC,
            {
                "business_account_id": business_account_id,
                "phone_number_ids": list(phone_number_ids),
                "templates": len(templates),
            },
        )
    return len(templates)


@dataclass(frozen=True)
class TemplateSync:
    """What keeps the template cache fresh: Graph, the WhatsApp token, and the WABAs to sync
    with the phone numbers (sender accounts) each one owns."""

    client: httpx.Client
    base_url: str
    version: str
    business_accounts: Mapping[str, Sequence[str]]
    token: Callable[[], str]
    interval_seconds: int


class TemplateSyncReport(BaseModel):
    synced: dict[str, int] = Field(default_factory=dict)  # WABA -> templates listed
    failed: dict[str, str] = Field(default_factory=dict)  # WABA -> why


def sync_due(db: Database, sync: TemplateSync, *, everything: bool = False) -> TemplateSyncReport:
    """Sync the WABAs that are due (never synced, last failed, or older than the interval), or
    ``everything``. A failure is recorded and reported, never raised: the cache keeps what the
    last good sync stored, and the next sweep tries again."""
    accounts = sorted(sync.business_accounts)
    if everything:
        due = accounts
    else:
        rows = db.fetch_all(
            sql.TEMPLATE_SYNCS_DUE,
            {"business_account_ids": accounts, "interval_seconds": sync.interval_seconds},
        )
        due = [row["business_account_id"] for row in rows]
    report = TemplateSyncReport()
    for business_account_id in due:
        phone_number_ids = list(sync.business_accounts[business_account_id])
        try:
            report.synced[business_account_id] = sync_templates(
                db,
                sync.client,
                base_url=sync.base_url,
                version=sync.version,
                business_account_id=business_account_id,
                phone_number_ids=phone_number_ids,
                token=sync.token,
            )
        except (TemplateSyncError, TokenUnavailableError) as exc:
            report.failed[business_account_id] = str(exc)
            with db.connection() as conn:
                conn.execute(
                    sql.RECORD_TEMPLATE_SYNC_FAILURE,
                    {
                        "business_account_id": business_account_id,
                        "phone_number_ids": phone_number_ids,
                        "error": str(exc),
                    },
                )
    return report


def template_sync_status(db: Database) -> list[dict[str, Any]]:
    return [dict(row) for row in db.fetch_all(sql.TEMPLATE_SYNC_STATUS)]


def list_templates(db: Database, business_account_id: str | None = None) -> list[dict[str, Any]]:
    rows = db.fetch_all(sql.WHATSAPP_TEMPLATES_LIST, {"business_account_id": business_account_id})
    return [dict(row) for row in rows]


def template_problem(
    conn: psycopg.Connection[DictRow], sender_account_id: object, step: Template
) -> str | None:
    """Why this step cannot be sent from this sender, or ``None``: checked at enqueue against
    the synced templates (name, language, status, parameter counts, buttons)."""
    row = conn.execute(
        sql.WHATSAPP_TEMPLATE_FOR_SENDER,
        {"sender_account_id": sender_account_id, "name": step.name, "language": step.language},
    ).fetchone()
    label = f"template {step.name!r} ({step.language})"
    if row is None or row["business_account_id"] is None:
        return (
            f"{label}: no templates synced for this sender's business account; list its WABA in "
            "SENDONCE_WHATSAPP_BUSINESS_ACCOUNTS (the sweeper syncs it) or run `sendonce templates sync`"
        )
    if row["name"] is None:
        return f"{label} does not exist in business account {row['business_account_id']} (as last synced)"
    if row["status"] != "APPROVED":
        return f"{label} is {row['status']}, not APPROVED: Meta refuses it (132015 paused, 132016 disabled)"
    if row["body_parameters"] != len(step.body_parameters):
        return (
            f"{label} takes {row['body_parameters']} body parameters; the step gives "
            f"{len(step.body_parameters)} (Meta refuses a mismatch with 132000)"
        )
    header_format = row["header_format"]
    wants_header = header_format is not None and (header_format != "text" or row["header_parameters"] > 0)
    if wants_header != (step.header is not None):
        return f"{label} header: the template's is {header_format or 'absent'}; the step's does not match"
    if step.header is not None and header_format != step.header.format:
        return f"{label} has a {header_format} header; the step gives a {step.header.format} one"
    dynamic = {
        b["index"]: b["type"] for b in row["buttons"] if b["type"] == "quick_reply" or b.get("dynamic")
    }
    for button in step.buttons:
        if dynamic.get(button.index) != button.type:
            return f"{label} has no {button.type} button at index {button.index} that takes a parameter"
    return None
