"""The DynamoDB gate in front of every provider call, built on Powertools Idempotency.

A conditional write of an INPROGRESS record keyed by the message's idempotency key happens
before the provider is called. Whoever wins that write is the only caller for the whole
dedupe window. Three of Powertools' defaults would reintroduce the duplicates of the seed
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
* **Unconditional completion.** Powertools completes a record without checking who owns it.
  That is safe here because only the owner of the INPROGRESS record ever runs the provider
  call, and nothing else completes records.

A write whose response is lost is the one case Powertools cannot tell apart from a rival's
record: botocore retries the put, the retry meets the record the first attempt wrote, and the
caller would give up on a message nobody sent, leaving it ``unknown``. So each INPROGRESS
record carries its writer, a fresh id per ``deliver_once``:

* a retried put that meets a record with this call's writer id is this call's own write. The
  provider has not been called (the put comes first), so the call goes ahead;
* when the write fails outright, the call deletes the record on the condition that it is
  still INPROGRESS and still its own. That can only remove a write that never led to a call.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
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
    IdempotencyItemNotFoundError,
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
    """An INPROGRESS record that never expires before the dedupe window does, and that names
    its writer so a lost response to its own put is recognised (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Sends run on a thread pool; each thread's put carries the id of its own call. A
        # context variable, not a thread-local: a bounded client (shared.bounded_calls) makes
        # the call, and so runs this hook, on a helper thread in a copy of the caller's context.
        self._current: ContextVar[str | None] = ContextVar(f"sendonce_writer_{id(self)}", default=None)
        self.client.meta.events.register(
            "before-parameter-build.dynamodb.PutItem",
            self._stamp_writer,
            unique_id=f"sendonce-writer-{id(self)}",
        )

    @contextmanager
    def writing_as(self, writer: str) -> Iterator[None]:
        token = self._current.set(writer)
        try:
            yield
        finally:
            self._current.reset(token)

    def _writer(self) -> str | None:
        return self._current.get()

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

    def release_own_inprogress(self, data: dict[str, Any], writer: str) -> bool:
        """Delete the key's record only while it is INPROGRESS and written by ``writer``, and
        say whether one was deleted. Anything else (no record, a rival's, a completed one) is
        left alone."""
        key = self._get_hashed_idempotency_key(data=data)
        if key is None:
            return False
        try:
            response = self.client.delete_item(
                TableName=self.table_name,
                Key=self._get_key(key),
                ConditionExpression="#writer = :writer AND #status = :inprogress",
                ExpressionAttributeNames={"#writer": WRITER_ATTR, "#status": self.status_attr},
                ExpressionAttributeValues={":writer": {"S": writer}, ":inprogress": {"S": _INPROGRESS}},
                ReturnValues="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            return False
        return bool(response.get("Attributes"))


class GuardVerdict(StrEnum):
    CALLED = "called"  # this caller won the record and called the provider
    REPLAYED = "replayed"  # a COMPLETED record exists: its stored outcome, no call
    IN_PROGRESS = "in_progress"  # another caller holds the record: no call
    STORE_UNAVAILABLE = "store_unavailable"  # could not write the record: no call


@dataclass(frozen=True)
class GuardResult:
    verdict: GuardVerdict
    outcome: SendOutcome | None = None
    # The provider was called but the record could not be completed (or deleted). The
    # INPROGRESS record still blocks any resend, so nothing is lost, but operators should know.
    record_unsettled: bool = False
    error: str = ""
    # STORE_UNAVAILABLE only: a record this call's failed write had committed was found and
    # deleted. False when there was none to delete, or the clean-up failed; in the latter
    # case, or if a delayed put commits after the clean-up, a later attempt meets the record
    # and the row ends ``unknown`` (safe, needs an operator).
    own_record_released: bool = False

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

    def deliver_once(self, idempotency_key: str, send: Any) -> GuardResult:
        """Call ``send()`` at most once per idempotency key within the dedupe window."""
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
        try:
            with self._persistence.writing_as(writer):
                stored = guarded(record={_KEY_FIELD: idempotency_key})
        except _ProvablyNotSentError as exc:
            return GuardResult(GuardVerdict.CALLED, exc.outcome)
        except IdempotencyAlreadyInProgressError:
            return GuardResult(GuardVerdict.IN_PROGRESS)
        except IdempotencyPersistenceLayerError as exc:
            if called:
                return GuardResult(GuardVerdict.CALLED, called[0], record_unsettled=True, error=str(exc))
            released = self._release(idempotency_key, writer)
            return GuardResult(GuardVerdict.STORE_UNAVAILABLE, error=str(exc), own_record_released=released)
        if called:
            return GuardResult(GuardVerdict.CALLED, called[0])
        return GuardResult(GuardVerdict.REPLAYED, SendOutcome.model_validate(stored))

    def _release(self, idempotency_key: str, writer: str) -> bool:
        """The write failed, so the provider was not called: a record the write may have left
        behind is removed, or it would block this message until an operator steps in."""
        try:
            return self._persistence.release_own_inprogress({_KEY_FIELD: idempotency_key}, writer)
        except (BotoCoreError, ClientError):
            return False

    def lookup(self, idempotency_key: str) -> RecordLookup:
        """Read the record for a key (the sweeper's view). Raises on store errors, so a
        sweeper that cannot read never concludes 'absent'."""
        try:
            record: DataRecord | None = self._persistence.get_record(data={_KEY_FIELD: idempotency_key})
        except IdempotencyItemNotFoundError:
            return RecordLookup(RecordState.ABSENT)
        if record is None:
            return RecordLookup(RecordState.ABSENT)
        if record.status == RecordState.EXPIRED:
            return RecordLookup(RecordState.EXPIRED)
        if record.status == RecordState.COMPLETED:
            stored = record.response_json_as_dict()
            return RecordLookup(RecordState.COMPLETED, SendOutcome.model_validate(stored) if stored else None)
        return RecordLookup(RecordState.INPROGRESS)

    def forget(self, idempotency_key: str) -> None:
        """Delete a key's record, so the next attempt may call the provider again. Only an
        explicit resend decision (an operator, or a channel whose policy is ``resend``) does
        this: it is the one way to accept the risk of a second delivery."""
        self._persistence.delete_record(data={_KEY_FIELD: idempotency_key}, exception=RuntimeError("resend"))
