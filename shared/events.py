"""Pydantic models of every event a handler accepts.

A handler's first act is ``Model.model_validate(event)``: a malformed event fails there with
a field-by-field error, before any connection is opened or any row is touched.

Every free-text field is :data:`Text`: a string Postgres can store. JSON allows NUL (as
``\\u0000``) and Postgres text does not, so without this it fails deep in psycopg (DataError)
after the transaction has begun, with no field named.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    Tag,
    ValidationError,
    field_validator,
)

from shared.addresses import validate_region
from shared.providers.outcome import Channel


def storable_text(value: str) -> str:
    # Lone surrogates need no check here: pydantic-core refuses them as "not a valid string".
    if "\x00" in value:
        raise ValueError(f"contains a NUL character at position {value.index(chr(0))}; text cannot hold NUL")
    return value


Text = Annotated[str, AfterValidator(storable_text)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DispatchRequest(_Strict):
    """Input of the dispatcher, set by the EventBridge Scheduler schedule (or by hand)."""

    source: Literal["sendonce.scheduler", "sendonce.manual"]
    schedule: Text = Field(default="", max_length=128)
    max_batches: int | None = Field(default=None, ge=1, le=10_000)
    batch_size: int | None = Field(default=None, ge=1, le=500)


class SweepRequest(_Strict):
    """Input of the sweeper schedule."""

    source: Literal["sendonce.scheduler", "sendonce.manual"]
    schedule: Text = Field(default="", max_length=128)


class MigrateRequest(_Strict):
    source: Literal["sendonce.manual", "sendonce.deploy"]
    dry_run: bool = False


class CustomResourceRequest(BaseModel):
    """CloudFormation's request to the migrate function, the ``SchemaMigration`` custom
    resource in template.yaml. Fields CloudFormation may add are ignored rather than refused:
    a refused request would get no answer, and the stack would wait for one."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    request_type: Literal["Create", "Update", "Delete"] = Field(alias="RequestType")
    # A presigned S3 URL on AWS; plain http is accepted for the loopback server in the tests.
    response_url: str = Field(alias="ResponseURL", pattern=r"^https?://")
    stack_id: str = Field(alias="StackId", min_length=1)
    request_id: str = Field(alias="RequestId", min_length=1)
    logical_resource_id: str = Field(alias="LogicalResourceId", min_length=1)
    resource_type: str = Field(alias="ResourceType", min_length=1)
    # Absent on Create: the function names the resource in its first answer.
    physical_resource_id: str | None = Field(default=None, alias="PhysicalResourceId", min_length=1)
    resource_properties: dict[str, Any] = Field(default_factory=dict, alias="ResourceProperties")


def _migrate_event_kind(event: Any) -> str:
    return "cloudformation" if isinstance(event, dict) and "RequestType" in event else "manual"


class MigrateEvent(
    RootModel[
        Annotated[
            Annotated[MigrateRequest, Tag("manual")]
            | Annotated[CustomResourceRequest, Tag("cloudformation")],
            Discriminator(_migrate_event_kind),
        ]
    ]
):
    """What the migrate function accepts: an operator's event (``events/migrate.json``) or a
    CloudFormation custom resource request (``events/migrate-cfn-*.json``)."""


class EnqueueContact(_Strict):
    address: Text = Field(min_length=1, max_length=256)
    display_name: Text = Field(default="", max_length=256)

    @field_validator("address")
    @classmethod
    def _strip(cls, value: str) -> str:
        stripped = value.strip()
        if not stripped:
            raise ValueError("address must not be blank")
        return stripped


class EnqueueStep(_Strict):
    message_type: Text = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_.:-]+$")
    body: Text = Field(min_length=1, max_length=4096)
    delay_seconds: int = Field(default=0, ge=0, le=90 * 24 * 3600)


class EnqueueRequest(_Strict):
    """Start (or extend) a campaign: upsert contacts and enqueue each step once per contact.

    Repeating the same request is harmless: contacts, campaign membership and queue rows are
    all unique in Postgres, and the enqueue uses ON CONFLICT DO NOTHING.
    """

    source: Literal["sendonce.api", "sendonce.manual"]
    campaign_id: UUID
    campaign_name: Text = Field(min_length=1, max_length=256)
    channel: Channel
    sender_provider_id: Text = Field(min_length=1, max_length=256)
    # ISO 3166-1 alpha-2. Stored on the sender account (and kept when a later event omits
    # it); reads national-format WhatsApp numbers such as "07700 900123" for "GB".
    sender_default_region: Annotated[Text, AfterValidator(validate_region)] | None = None
    contacts: list[EnqueueContact] = Field(min_length=1, max_length=50_000)
    steps: list[EnqueueStep] = Field(min_length=1, max_length=20)

    @field_validator("steps")
    @classmethod
    def _unique_steps(cls, steps: list[EnqueueStep]) -> list[EnqueueStep]:
        types = [s.message_type for s in steps]
        repeated = sorted({t for t in types if types.count(t) > 1})
        if repeated:
            raise ValueError(f"message_type must be unique per request; repeated: {', '.join(repeated)}")
        return steps


class InvalidEventError(ValueError):
    """The event does not match its model. Raised before any I/O, so nothing changed."""


def parse_event[ModelT: BaseModel](model: type[ModelT], event: object) -> ModelT:
    try:
        return model.model_validate(event)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<event>'}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidEventError(
            f"invalid {model.__name__} event ({exc.error_count()} problems): {problems}"
        ) from None
