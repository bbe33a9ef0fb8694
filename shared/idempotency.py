"""The DynamoDB gate in front of every provider call, built on Powertools Idempotency.

A conditional write of an INPROGRESS record keyed by the message's idempotency key happens
before the provider is called. Whoever wins that write is the only caller for the whole
dedupe window. Four of Powertools' defaults would reintroduce the duplicates of the seed
incidents, and each is closed here:

* **Expiring INPROGRESS.** Powertools lets a new caller overwrite an INPROGRESS record once the
  first invocation's remaining Lambda time has passed (its documented "Lambda timeouts"
  behaviour, upstream issue #8049). A send that outlived its invocation would then be re-run.
  ``BlockingDynamoDBPersistenceLayer`` never stores ``in_progress_expiration``, so the record
  blocks until ``expiration`` (the dedupe window) whatever the invocation's deadline was.
* **Deleting on exception.** Powertools deletes the record when the wrapped function raises.
  The wrapped function here raises only ``_ProvablyNotSentError``, for outcomes where the
  provider provably did not send; every other outcome, including ambiguous ones and
  unexpected errors, is *returned* and stored as COMPLETED, so it blocks a resend.
* **Unconditional removal.** Powertools deletes by key alone. A DeleteItem delayed inside
  DynamoDB past botocore's retry could land after the next writer's put and remove a record
  that stands for a real call; "no record" would then no longer prove "never called".
* **Unconditional completion.** Powertools completes by key alone, and UpdateItem creates a
  missing item, so a delayed completion could land on a later writer's record.

So every record names its writer, a fresh id per ``deliver_once``, and **every completion and
every removal is conditional on the writer** (and, for the dispatcher's, on INPROGRESS). That
makes the sweeper's rule sound: a record is only ever removed by the call that wrote it after
that call delivered nothing, by a release backed by Postgres' proof of the same, or by an
explicit, recorded resend decision. The writer id also settles the cases Powertools cannot:

* a retried put that meets a record with this call's writer id is this call's own write whose
  answer was lost. The provider has not been called (the put comes first), so the call goes
  ahead;
* when the write fails outright, the call deletes its own record, if any; and wherever a
  record outlives the call that wrote it without standing for a delivery (the clean-up failed,
  a put delayed inside DynamoDB landed afterwards, a provably-unsent outcome whose delete
  failed), Postgres holds the writer's attempt as "not called" or provably not sent, and the
  next put releases that record (``proves_unsent``) instead of leaving the message stuck.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyPersistenceLayerError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
from botocore.exceptions import BotoCoreError, ClientError

from shared.providers.outcome import SendOutcome

KEY_PREFIX = "sendonce-send"

# Powertools warns when it cannot see the Lambda deadline. Not seeing it is the point here.
warnings.filterwarnings("ignore", message="Couldn't determine the remaining time left", category=UserWarning)
_KEY_FIELD = "idempotency_key"
WRITER_ATTR = "writer"
_INPROGRESS = "INPROGRESS"


class BlockingDynamoDBPersistenceLayer(DynamoDBPersistenceLayer):
    """An INPROGRESS record that never expires before the dedupe window does, names its
    writer, and is only ever completed or removed by that writer (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Sends run on a thread pool; each thread's put carries the id of its own call. A
        # context variable, not a thread-local: a bounded client (shared.bounded_calls) makes
        # the call, and so runs this hook, on a helper thread in a copy of the caller's context.
        self._current: ContextVar[str | None] = ContextVar(f"sendonce_writer_{id(self)}", default=None)
        self._conflict: ContextVar[str | None] = ContextVar(f"sendonce_conflict_{id(self)}", default=None)
        self.client.meta.events.register(
            "before-parameter-build.dynamodb.PutItem",
            self._stamp_writer,
            unique_id=f"sendonce-writer-{id(self)}",
        )

    @contextmanager
    def writing_as(self, writer: str) -> Iterator[None]:
        token = self._current.set(writer)
        self._conflict.set(None)
        try:
            yield
        finally:
            self._current.reset(token)

    def _writer(self) -> str | None:
        return self._current.get()

    def conflicting_writer(self) -> str | None:
        """The writer of the record this call's last put ran into, if it named one."""
        return self._conflict.get()

    def _stamp_writer(self, params: dict[str, Any], **_: Any) -> None:
        writer = self._writer()
        if writer and params.get("TableName") == self.table_name and "Item" in params:
            params["Item"][WRITER_ATTR] = {"S": writer}

    def save_inprogress(self, data: dict[str, Any], remaining_time_in_millis: int | None = None) -> None:
        super().save_inprogress(data=data, remaining_time_in_millis=None)

    def _put_record(self, data_record: DataRecord) -> None:
        try:
            super()._put_record(data_record)
        except IdempotencyItemAlreadyExistsError as exc:
            if self._is_own_inprogress(exc.__cause__):
                return  # botocore retried our put after its response was lost
            self._conflict.set(_writer_of(exc.__cause__))
            raise

    def _is_own_inprogress(self, cause: BaseException | None) -> bool:
        writer = self._writer()
        if not writer or not isinstance(cause, ClientError):
            return False
        item: dict[str, Any] = cause.response.get("Item") or {}  # type: ignore[assignment]
        return bool(
            item.get(WRITER_ATTR, {}).get("S") == writer
            and item.get(self.status_attr, {}).get("S") == _INPROGRESS
        )

    def _update_record(self, data_record: DataRecord) -> None:
        """Completion, conditional on this call still owning its INPROGRESS record.

        Powertools updates unconditionally, and an UpdateItem creates a missing item. A
        completion delayed inside DynamoDB could then land on the record of a later writer
        (after an operator's resend forgot ours) or recreate a record nobody holds."""
        writer = self._writer()
        if writer is None:
            raise RuntimeError("a record is completed only inside SendGuard.deliver_once")
        self.client.update_item(
            TableName=self.table_name,
            Key=self._get_key(data_record.idempotency_key),
            UpdateExpression="SET #response_data = :response_data, #expiry = :expiry, #status = :status",
            ConditionExpression="#writer = :writer AND #status = :inprogress",
            ExpressionAttributeNames={
                "#response_data": self.data_attr,
                "#expiry": self.expiry_attr,
                "#status": self.status_attr,
                "#writer": WRITER_ATTR,
            },
            ExpressionAttributeValues={
                ":response_data": {"S": data_record.response_data},
                ":expiry": {"N": str(data_record.expiry_timestamp)},
                ":status": {"S": data_record.status},
                ":writer": {"S": writer},
                ":inprogress": {"S": _INPROGRESS},
            },
        )

    def _delete_record(self, data_record: DataRecord) -> None:
        """Powertools' removal after the guarded function raised (a provably-unsent outcome),
        conditional on this call's writer and INPROGRESS.

        Unconditional, a DeleteItem delayed inside DynamoDB past botocore's retry could land
        after the next writer's put and remove a record that stands for a real call: the
        sweeper would read "no record" as "never called" and send again (issue 6, item 1.1).
        A failed condition means our record is already gone (an earlier attempt of this very
        delete) or was never ours: either way nothing of ours is left to remove."""
        writer = self._writer()
        if writer is None:
            raise RuntimeError("a record is removed only inside SendGuard.deliver_once")
        self._delete_conditionally(data_record.idempotency_key, writer, _INPROGRESS)

    def delete_if_held_by(self, data: dict[str, Any], writer: str | None, status: str = _INPROGRESS) -> bool:
        """Delete the key's record only while it has this writer (``None``: a record that names
        none) and this status, and say whether one was deleted. Anything else is left alone."""
        key = self._get_hashed_idempotency_key(data=data)
        if key is None:
            return False
        return self._delete_conditionally(key, writer, status)

    def _delete_conditionally(self, hashed_key: str, writer: str | None, status: str) -> bool:
        writer_condition = "attribute_not_exists(#writer)" if writer is None else "#writer = :writer"
        values: dict[str, Any] = {":status": {"S": status}}
        if writer is not None:
            values[":writer"] = {"S": writer}
        try:
            response = self.client.delete_item(
                TableName=self.table_name,
                Key=self._get_key(hashed_key),
                ConditionExpression=f"{writer_condition} AND #status = :status",
                ExpressionAttributeNames={"#writer": WRITER_ATTR, "#status": self.status_attr},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            return False
        return bool(response.get("Attributes"))

    def read_record(self, data: dict[str, Any]) -> tuple[DataRecord, str | None, str] | None:
        """The key's record, its writer and its status as stored (strongly consistent), or
        ``None`` when there is none."""
        key = self._get_hashed_idempotency_key(data=data)
        if key is None:
            return None
        response = self.client.get_item(
            TableName=self.table_name, Key=self._get_key(key), ConsistentRead=True
        )
        item = response.get("Item")
        if not item:
            return None
        stored_status = str(item.get(self.status_attr, {}).get("S", ""))
        return self._item_to_data_record(item), _writer_of_item(item), stored_status


def _writer_of_item(item: dict[str, Any]) -> str | None:
    writer = item.get(WRITER_ATTR, {}).get("S")
    return writer if isinstance(writer, str) and writer else None


def _writer_of(cause: BaseException | None) -> str | None:
    if not isinstance(cause, ClientError):
        return None
    item: dict[str, Any] = cause.response.get("Item") or {}  # type: ignore[assignment]
    return _writer_of_item(item)


class GuardVerdict(StrEnum):
    CALLED = "called"  # this caller won the record and called the provider
    REPLAYED = "replayed"  # a COMPLETED record exists: its stored outcome, no call
    IN_PROGRESS = "in_progress"  # another caller holds the record: no call
    STORE_UNAVAILABLE = "store_unavailable"  # could not write the record: no call


@dataclass(frozen=True)
class GuardResult:
    verdict: GuardVerdict
    outcome: SendOutcome | None = None
    # The writer id this call wrote (or tried to write) its record under. Postgres keeps it
    # with the attempt, so a record this call leaves behind can later be matched to the proof
    # of what the call did.
    writer: str = ""
    # The provider was called but the record could not be completed (or removed). The
    # INPROGRESS record still blocks any resend, so nothing is lost, but operators should know.
    record_unsettled: bool = False
    error: str = ""
    # STORE_UNAVAILABLE only: a record this call's failed write had committed was found and
    # deleted. False when there was none to delete, or the clean-up failed; a record left
    # behind names this call's writer, and the attempt Postgres records for it ("not called")
    # lets the next attempt release it.
    own_record_released: bool = False
    # IN_PROGRESS only: the writer named by the record that blocked this call.
    holder: str | None = None
    # A record left by an earlier writer, proven by Postgres never to stand for a delivery,
    # was released before this call wrote its own.
    released_writer: str | None = None

    @property
    def provider_called(self) -> bool:
        return self.verdict is GuardVerdict.CALLED


class _ProvablyNotSentError(Exception):
    def __init__(self, outcome: SendOutcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


class RecordState(StrEnum):
    ABSENT = "absent"
    EXPIRED = "EXPIRED"  # older than the dedupe window: proves nothing either way
    INPROGRESS = "INPROGRESS"
    COMPLETED = "COMPLETED"


@dataclass(frozen=True)
class RecordLookup:
    state: RecordState
    outcome: SendOutcome | None = None
    writer: str | None = None
    # The status on disk: an EXPIRED record still reads INPROGRESS or COMPLETED there.
    stored_status: str = ""


# Asked, with a writer id, whether Postgres holds proof that this writer's call never
# delivered the message (an attempt recorded as not called, or provably not sent).
ProvesUnsent = Callable[[str], bool]


class SendGuard:
    def __init__(self, persistence: BlockingDynamoDBPersistenceLayer, dedupe_window_seconds: int) -> None:
        self._persistence = persistence
        self._config = IdempotencyConfig(
            event_key_jmespath=_KEY_FIELD,
            expires_after_seconds=dedupe_window_seconds,
            raise_on_no_idempotency_key=True,
            use_local_cache=False,
        )
        # Configure once, before any thread uses the layer. Powertools' configure() marks the
        # layer configured before it copies the settings, so threads racing a first call could
        # save records with default expiry or key expression.
        self._persistence.configure(config=self._config, key_prefix=KEY_PREFIX)

    @classmethod
    def for_table(cls, table_name: str, dedupe_window_seconds: int, boto3_client: Any = None) -> SendGuard:
        return cls(
            BlockingDynamoDBPersistenceLayer(table_name=table_name, boto3_client=boto3_client),
            dedupe_window_seconds,
        )

    def deliver_once(
        self, idempotency_key: str, send: Callable[[], Any], proves_unsent: ProvesUnsent | None = None
    ) -> GuardResult:
        """Call ``send()`` at most once per idempotency key within the dedupe window.

        ``proves_unsent`` lets a record left behind by an earlier writer be released: when the
        put meets an INPROGRESS record whose writer Postgres proves never delivered (its
        delete failed after a provably-unsent outcome, or its put landed after it gave up),
        that record is deleted, conditionally on its writer, and the put is tried once more."""
        called: list[SendOutcome] = []

        def run(record: dict[str, str]) -> dict[str, Any]:
            try:
                # Validated here: anything but a SendOutcome (an adapter bug) must not raise
                # below, where Powertools would delete the record of a call that happened.
                outcome = SendOutcome.model_validate(send())
            except Exception as exc:  # an adapter bug after the request may have gone out
                outcome = SendOutcome.ambiguous("adapter:unexpected_error", repr(exc)[:500])
            called.append(outcome)
            if outcome.provably_not_sent:
                raise _ProvablyNotSentError(outcome)
            return outcome.model_dump(mode="json")

        guarded = idempotent_function(
            data_keyword_argument="record",
            config=self._config,
            persistence_store=self._persistence,
            key_prefix=KEY_PREFIX,
        )(run)
        writer = uuid.uuid4().hex
        released: str | None = None
        while True:
            try:
                with self._persistence.writing_as(writer):
                    stored = guarded(record={_KEY_FIELD: idempotency_key})
            except _ProvablyNotSentError as exc:
                return GuardResult(GuardVerdict.CALLED, exc.outcome, writer, released_writer=released)
            except IdempotencyAlreadyInProgressError:
                holder = self._persistence.conflicting_writer()
                if (
                    released is None
                    and holder is not None
                    and proves_unsent is not None
                    and proves_unsent(holder)
                    and self.release(idempotency_key, holder)
                ):
                    released = holder
                    continue
                return GuardResult(GuardVerdict.IN_PROGRESS, writer=writer, holder=holder)
            except IdempotencyPersistenceLayerError as exc:
                if called:
                    return GuardResult(
                        GuardVerdict.CALLED,
                        called[0],
                        writer,
                        record_unsettled=True,
                        error=str(exc),
                        released_writer=released,
                    )
                own = self._release_quietly(idempotency_key, writer)
                return GuardResult(
                    GuardVerdict.STORE_UNAVAILABLE, writer=writer, error=str(exc), own_record_released=own
                )
            if called:
                return GuardResult(GuardVerdict.CALLED, called[0], writer, released_writer=released)
            return GuardResult(GuardVerdict.REPLAYED, SendOutcome.model_validate(stored), writer)

    def release(self, idempotency_key: str, writer: str) -> bool:
        """Delete the key's INPROGRESS record only if ``writer`` wrote it; whether one was
        deleted. Callers hold proof that this writer's call delivered nothing."""
        return self._persistence.delete_if_held_by({_KEY_FIELD: idempotency_key}, writer)

    def _release_quietly(self, idempotency_key: str, writer: str) -> bool:
        """The write failed, so the provider was not called: a record the write may have left
        behind is removed, or it would block this message until its proof is checked."""
        try:
            return self.release(idempotency_key, writer)
        except (BotoCoreError, ClientError):
            return False

    def lookup(self, idempotency_key: str) -> RecordLookup:
        """Read the record for a key (the sweeper's view). Raises on store errors, so a
        sweeper that cannot read never concludes 'absent'."""
        found = self._persistence.read_record({_KEY_FIELD: idempotency_key})
        if found is None:
            return RecordLookup(RecordState.ABSENT)
        record, writer, stored_status = found
        if record.is_expired:
            return RecordLookup(RecordState.EXPIRED, writer=writer, stored_status=stored_status)
        if record.status == RecordState.COMPLETED:
            stored = record.response_json_as_dict()
            outcome = SendOutcome.model_validate(stored) if stored else None
            return RecordLookup(RecordState.COMPLETED, outcome, writer, stored_status)
        return RecordLookup(RecordState.INPROGRESS, writer=writer, stored_status=stored_status)

    def forget(self, idempotency_key: str, seen: RecordLookup) -> bool:
        """Delete a key's record, so the next attempt may call the provider again, and say
        whether it was deleted. Only an explicit resend decision (an operator, or a channel
        whose policy is ``resend``) does this: it is the one way to accept the risk of a
        second delivery. The delete is conditional on the record still being the one the
        decision was taken on (``seen``), so a delayed delete can never remove a later
        writer's record. An absent record needs nothing."""
        if seen.state is RecordState.ABSENT:
            return True
        return self._persistence.delete_if_held_by(
            {_KEY_FIELD: idempotency_key}, seen.writer, seen.stored_status
        )
