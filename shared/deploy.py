"""Schema migrations as a step of ``sam deploy``.

template.yaml's ``SchemaMigration`` custom resource makes CloudFormation invoke the migrate
function on every deploy that changes its ``SchemaVersion``, and the functions that use the
schema (and so their schedules) are created or updated only after it succeeded.

CloudFormation waits for an answer PUT to the request's presigned ``ResponseURL`` (Amazon S3),
so every request gets one, SUCCESS or FAILED, whatever went wrong before it; without an answer
the stack would wait out the resource's ``ServiceTimeout``. Create and Update migrate; Delete
answers SUCCESS and leaves the schema and its data alone (the database outlives the stack).

The response's fields are those of CloudFormation's "Custom resource response objects"
(https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/crpg-ref-responses.html).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from shared.events import CustomResourceRequest, MigrateRequest
from shared.observability import logger
from shared.storage.db import Database
from shared.storage.migrate import migrate

# The whole response body must stay under 4,096 bytes; a reason longer than this is cut.
REASON_LIMIT = 1500
# The answer is small; S3 either takes it quickly or not at all.
RESPONSE_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# Connection attempts per answer: a refused connection is retried, since an unanswered
# request holds the stack until its ServiceTimeout.
RESPONSE_CONNECT_RETRIES = 3
# CloudFormation sends no physical id on Create; the first answer names the resource, and
# every later one repeats it (a different id would make CloudFormation replace the resource).
PHYSICAL_RESOURCE_ID = "sendonce-schema"


class CustomResourceResponse(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)

    status: Literal["SUCCESS", "FAILED"] = Field(alias="Status")
    reason: str = Field(alias="Reason")
    physical_resource_id: str = Field(alias="PhysicalResourceId")
    stack_id: str = Field(alias="StackId")
    request_id: str = Field(alias="RequestId")
    logical_resource_id: str = Field(alias="LogicalResourceId")
    data: dict[str, str] = Field(default_factory=dict, alias="Data")


def run_migrations(
    request: MigrateRequest | CustomResourceRequest,
    database: Callable[[], Database],
    http: httpx.Client | None = None,
) -> dict[str, Any]:
    """The migrate function: an operator's run, or CloudFormation's request answered at its
    ResponseURL. ``database`` is called only when the schema is to be touched, so a failure
    to reach Postgres (or to read its secret) becomes CloudFormation's FAILED reason."""
    if isinstance(request, CustomResourceRequest):
        with nullcontext(http) if http else make_response_client() as client:
            return answer_custom_resource(request, database, client).model_dump(mode="json")
    report = migrate(database(), dry_run=request.dry_run)
    logger.info("migrations", extra={"applied": report.applied, "dry_run": request.dry_run})
    return {"applied": report.applied, "already_applied": report.already_applied, "dry_run": request.dry_run}


def make_response_client() -> httpx.Client:
    # trust_env=False: an HTTP(S)_PROXY meant for other traffic must not carry the answer.
    return httpx.Client(
        timeout=RESPONSE_TIMEOUT,
        transport=httpx.HTTPTransport(retries=RESPONSE_CONNECT_RETRIES),
        trust_env=False,
    )


def answer_custom_resource(
    request: CustomResourceRequest, database: Callable[[], Database], http: httpx.Client
) -> CustomResourceResponse:
    response = _outcome(request, database)
    send_response(http, request.response_url, response)
    logger.info(
        "answered CloudFormation",
        extra={"request_type": request.request_type, "status": response.status, "reason": response.reason},
    )
    return response


def _outcome(request: CustomResourceRequest, database: Callable[[], Database]) -> CustomResourceResponse:
    answer = {
        "physical_resource_id": request.physical_resource_id or PHYSICAL_RESOURCE_ID,
        "stack_id": request.stack_id,
        "request_id": request.request_id,
        "logical_resource_id": request.logical_resource_id,
    }
    if request.request_type == "Delete":
        return CustomResourceResponse(
            status="SUCCESS",
            reason="schema and data left in place: the database outlives the stack",
            **answer,
        )
    try:
        report = migrate(database())
    except Exception as exc:
        logger.exception("migration failed; answering CloudFormation FAILED")
        # The reason shows in the stack's events. Connection errors name the host and the
        # database, never the URL's credentials (shared/storage/db.py redacts it).
        reason = f"migration failed: {type(exc).__name__}: {exc}"
        return CustomResourceResponse(status="FAILED", reason=reason[:REASON_LIMIT], **answer)
    version = max([*report.applied, *report.already_applied], default="")
    applied = ", ".join(report.applied) or "nothing"
    return CustomResourceResponse(
        status="SUCCESS",
        reason=f"applied {applied}; schema at {version}"[:REASON_LIMIT],
        data={"SchemaVersion": version, "Applied": ",".join(report.applied)},
        **answer,
    )


def send_response(http: httpx.Client, url: str, response: CustomResourceResponse) -> None:
    """PUT the answer. The Content-Type is sent empty, as AWS's own cfn-response module does:
    the presigned URL may be signed for an empty one, and S3 refuses a request whose headers
    differ from what was signed."""
    body = response.model_dump_json().encode()
    answer = http.put(url, content=body, headers={"Content-Type": ""})
    answer.raise_for_status()
