"""Pydantic models of every event a handler accepts.

A handler's first act is ``Model.model_validate(event)``: a malformed event fails there with
a field-by-field error, before any connection is opened or any row is touched.

Every free-text field is :data:`Text`: a string Postgres can store. JSON allows NUL (as
``\\u0000``) and Postgres text does not, so without this it fails deep in psycopg (DataError)
after the transaction has begun, with no field named.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.addresses import validate_region
from shared.content import validate_template
from shared.pacing import Action, SenderPacing
from shared.providers.outcome import Channel
from shared.providers.registry import channel_spec


def storable_text(value: str) -> str:
    # Lone surrogates need no check here: pydantic-core refuses them as "not a valid string".
    if "\x00" in value:
        raise ValueError(f"contains a NUL character at position {value.index(chr(0))}; text cannot hold NUL")
    return value


Text = Annotated[str, AfterValidator(storable_text)]


def storable_json(value: Any) -> Any:
    """Every string in a JSON value (keys too) passes ``storable_text``: jsonb cannot hold NUL."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): storable_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable_json(v) for v in value]
    return value


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
    response_url: Text = Field(alias="ResponseURL", pattern=r"^https?://")
    stack_id: Text = Field(alias="StackId", min_length=1)
    request_id: Text = Field(alias="RequestId", min_length=1)
    logical_resource_id: Text = Field(alias="LogicalResourceId", min_length=1)
    resource_type: Text = Field(alias="ResourceType", min_length=1)
    # Absent on Create: the function names the resource in its first answer.
    physical_resource_id: Text | None = Field(default=None, alias="PhysicalResourceId", min_length=1)
    resource_properties: dict[Text, Any] = Field(default_factory=dict, alias="ResourceProperties")


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
    # Custom fields a step's template reads ({company}); merged over the stored ones.
    fields: dict[
        Annotated[Text, Field(min_length=1, max_length=64)], Annotated[Text, Field(max_length=1024)]
    ] = Field(default_factory=dict, max_length=50)
    linkedin_profile_url: Text | None = Field(default=None, max_length=512)

    @field_validator("address")
    @classmethod
    def _strip(cls, value: str) -> str:
        stripped = value.strip()
        if not stripped:
            raise ValueError("address must not be blank")
        return stripped


def _zone_name(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA time zone {value!r}") from None
    return value


class _SendAt(_Strict):
    """An absolute send time: an ISO 8601 time with an offset, or a local time plus
    ``send_at_timezone`` (IANA). A local time that occurs twice (a fall-back hour) means its
    first occurrence; one that does not exist (a spring-forward gap) is read with the offset
    before the gap, i.e. it lands after the gap."""

    send_at: datetime | None = None
    send_at_timezone: Annotated[Text, AfterValidator(_zone_name)] | None = None

    @model_validator(mode="after")
    def _aware(self) -> Self:
        if self.send_at is None:
            if self.send_at_timezone is not None:
                raise ValueError("send_at_timezone needs a send_at")
            return self
        if self.send_at.tzinfo is None:
            if self.send_at_timezone is None:
                raise ValueError("send_at without an offset needs send_at_timezone (an IANA zone)")
            object.__setattr__(self, "send_at", self.send_at.replace(tzinfo=ZoneInfo(self.send_at_timezone)))
        return self


# Our choice, not a provider figure: neither LinkedIn nor Unipile documents how long a pending
# invitation stays acceptable; 30 days keeps a campaign from waiting forever on people who never
# answer, and a step can set its own.
DEFAULT_EVENT_TIMEOUT_SECONDS = 30 * 24 * 3600


class EnqueueStep(_SendAt):
    """One step of a sequence. Step 1 is due ``delay_seconds`` after the contact is queued;
    step N+1 ``delay_seconds`` after step N was sent; neither before ``send_at`` if set. Both
    move into the sender's window. ``body`` is a template (``shared.content``)."""

    message_type: Text = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_.:-]+$")
    body: Annotated[Text, AfterValidator(validate_template)] = Field(min_length=1, max_length=4096)
    delay_seconds: int = Field(default=0, ge=0, le=90 * 24 * 3600)
    # What the row spends of its sender's caps (LinkedIn invitations have their own).
    action: Action = Action.MESSAGE
    # Beyond plain text: a JSON object with a ``kind`` (text | template | media | invitation |
    # inmail) that the channel's content model validates (``shared/channels/<channel>/content.py``).
    # ``body`` stays the readable text the audit shows. None: ``body`` is sent as plain text.
    content: Annotated[dict[str, Any], AfterValidator(storable_json)] | None = None
    # Wait for this provider event instead of the previous step's send, then delay_seconds
    # (LinkedIn: "new_relation", the invitation was accepted). Not on step 1.
    after_event: Literal["new_relation"] | None = None
    # How long after the previous step's send the event may take; then the contact's sequence
    # stops (stop_cause event_timeout) so the campaign can complete. Only with after_event;
    # None there means DEFAULT_EVENT_TIMEOUT_SECONDS.
    event_timeout_seconds: int | None = Field(default=None, ge=3600, le=180 * 24 * 3600)

    @model_validator(mode="after")
    def _event_timeout_needs_an_event(self) -> EnqueueStep:
        if self.after_event is None:
            if self.event_timeout_seconds is not None:
                raise ValueError("event_timeout_seconds needs after_event: only a waiting step times out")
        elif self.event_timeout_seconds is None:
            object.__setattr__(self, "event_timeout_seconds", DEFAULT_EVENT_TIMEOUT_SECONDS)
        return self


def _contents_fit(channel: Channel, steps: list[EnqueueStep]) -> None:
    """Every step's content is something the channel can send, and an invitation is spent from
    the invitation caps (``action``) exactly when it is one."""
    spec = channel_spec(channel)
    if steps and steps[0].after_event is not None:
        raise ValueError("step 1 cannot wait for an event: nothing was sent to react to")
    for step in steps:
        kind = (
            spec.parse_content(step.content).model_dump().get("kind") if step.content is not None else "text"
        )
        if (kind == "invitation") != (step.action is Action.INVITATION):
            raise ValueError(
                f"step {step.message_type}: action {step.action.value} does not fit content kind {kind}"
            )


def _unique_message_types(steps: list[EnqueueStep]) -> list[EnqueueStep]:
    types = [s.message_type for s in steps]
    repeated = sorted({t for t in types if types.count(t) > 1})
    if repeated:
        raise ValueError(f"message_type must be unique per request; repeated: {', '.join(repeated)}")
    return steps


CrossCampaignPolicy = Literal["skip", "allow"]


class EnqueueRequest(_SendAt):
    """Start (or extend) a campaign: upsert contacts, store the steps, and queue step 1 once
    per contact (the later steps follow as each one is sent).

    Repeating the same request is harmless: contacts, campaign membership and queue rows are
    all unique in Postgres, and the enqueue uses ON CONFLICT DO NOTHING. A campaign id seen
    for the first time is created ``active`` with this sender as its pool.
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
    # Applies when this request creates the campaign; an existing campaign keeps its own
    # (a different value is refused, not silently ignored). Default: "skip".
    cross_campaign_policy: CrossCampaignPolicy | None = None

    @field_validator("steps")
    @classmethod
    def _unique_steps(cls, steps: list[EnqueueStep]) -> list[EnqueueStep]:
        return _unique_message_types(steps)

    @model_validator(mode="after")
    def _steps_fit_channel(self) -> Self:
        _contents_fit(self.channel, self.steps)
        return self


# --- control: campaign lifecycle and sender accounts ------------------------------------------

# A provider event name a campaign can stop on: an event_type, or event_type:status.
EventName = Annotated[Text, Field(min_length=1, max_length=64, pattern=r"^[a-z_]+(:[a-z_]+)?$")]
Reason = Annotated[Text, Field(max_length=512)]


class CampaignSpec(_SendAt):
    """A campaign as ``campaign.create`` (and ``sendonce campaign create --file``) takes it."""

    campaign_id: UUID
    name: Text = Field(min_length=1, max_length=256)
    channel: Channel
    # The pool: provider account ids of the channel's sender accounts (created if new). Each
    # contact is sent its whole sequence by one of them.
    senders: list[Annotated[Text, Field(min_length=1, max_length=256)]] = Field(min_length=1, max_length=20)
    sender_default_region: Annotated[Text, AfterValidator(validate_region)] | None = None
    steps: list[EnqueueStep] = Field(min_length=1, max_length=20)
    cross_campaign_policy: CrossCampaignPolicy = "skip"
    stop_on_events: list[EventName] = Field(default_factory=list, max_length=20)
    contacts: list[EnqueueContact] = Field(default_factory=list, max_length=50_000)

    @field_validator("steps")
    @classmethod
    def _unique_steps(cls, steps: list[EnqueueStep]) -> list[EnqueueStep]:
        return _unique_message_types(steps)

    @model_validator(mode="after")
    def _steps_fit_channel(self) -> Self:
        _contents_fit(self.channel, self.steps)
        return self

    @field_validator("senders")
    @classmethod
    def _unique_senders(cls, senders: list[str]) -> list[str]:
        repeated = sorted({s for s in senders if senders.count(s) > 1})
        if repeated:
            raise ValueError(f"each sender is listed once; repeated: {', '.join(repeated)}")
        return senders


class _Command(_Strict):
    source: Literal["sendonce.api", "sendonce.manual"]
    operator: Text = Field(min_length=1, max_length=128)


class CreateCampaign(_Command):
    """Create a campaign in ``draft`` (``start``: and start it at once)."""

    command: Literal["campaign.create"]
    campaign: CampaignSpec
    start: bool = False


class StartCampaign(_Command):
    command: Literal["campaign.start"]
    campaign_id: UUID


class PauseCampaign(_Command):
    command: Literal["campaign.pause"]
    campaign_id: UUID
    reason: Reason = ""


class ResumeCampaign(_Command):
    command: Literal["campaign.resume"]
    campaign_id: UUID


class CancelCampaign(_Command):
    command: Literal["campaign.cancel"]
    campaign_id: UUID
    reason: Reason = ""


class StopContact(_Command):
    """Stop a contact's sequences for good: in one campaign, or (no campaign) in all."""

    command: Literal["campaign.stop-contact"]
    channel: Channel
    address: Text = Field(min_length=1, max_length=256)
    campaign_id: UUID | None = None
    reason: Reason = ""


class _SenderCommand(_Command):
    channel: Channel
    provider_account_id: Text = Field(min_length=1, max_length=256)


class PauseSender(_SenderCommand):
    """Stop claiming the sender's rows until ``until`` (none: until resumed)."""

    command: Literal["sender.pause"]
    until: AwareDatetime | None = None
    reason: Reason = ""


class ResumeSender(_SenderCommand):
    command: Literal["sender.resume"]


class ConfigureSender(_SenderCommand):
    """Replace the sender's pacing configuration; unset fields take the channel's defaults."""

    command: Literal["sender.configure"]
    pacing: SenderPacing


ControlCommand = Annotated[
    CreateCampaign
    | StartCampaign
    | PauseCampaign
    | ResumeCampaign
    | CancelCampaign
    | StopContact
    | PauseSender
    | ResumeSender
    | ConfigureSender,
    Field(discriminator="command"),
]


class ControlRequest(RootModel[ControlCommand]):
    """Input of the control function: one operator command, picked by ``command``."""

    model_config = ConfigDict(frozen=True)


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


# --- contact import from S3 (issue 8) --------------------------------------------------------------


class ContactImportRequest(_Strict):
    """An operator's import of a CSV object: ``events/contacts-import.json``."""

    source: Literal["sendonce.api", "sendonce.manual"]
    campaign_id: UUID
    bucket: Text = Field(min_length=3, max_length=63)
    key: Text = Field(min_length=1, max_length=1024)
    sender_default_region: Annotated[Text, AfterValidator(validate_region)] | None = None


class _S3Bucket(BaseModel):
    name: Text


class _S3Object(BaseModel):
    key: Text


class _S3Entity(BaseModel):
    bucket: _S3Bucket
    object: _S3Object


class _S3Record(BaseModel):
    eventSource: Literal["aws:s3"]
    s3: _S3Entity


class S3ImportNotification(BaseModel):
    """S3's ObjectCreated notification (``events/contacts-import-s3.json``). The campaign is the
    key's folder: ``contacts/<campaign id>/<file>.csv``. Fields S3 adds are ignored."""

    Records: list[_S3Record] = Field(min_length=1, max_length=100)


def _import_event_kind(event: Any) -> str:
    return "s3" if isinstance(event, dict) and "Records" in event else "manual"


class ContactImportEvent(
    RootModel[
        Annotated[
            Annotated[ContactImportRequest, Tag("manual")] | Annotated[S3ImportNotification, Tag("s3")],
            Discriminator(_import_event_kind),
        ]
    ]
):
    """What the contacts function accepts."""
