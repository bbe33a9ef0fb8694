"""The one configuration model. Every function validates it at cold start.

Logic never reads ``os.environ``; it receives a ``Settings`` (or the values derived from it).
The timing arithmetic that keeps a slow but live worker from ever being swept lives here, in
one place, so the dispatcher, the sweeper and the docs agree on it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

UnknownPolicy = Literal["hold", "resend", "resend_if_silent"]

# The US carrier keywords (CTIA: STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT), the text of
# WhatsApp's "Marketing opt-out" button ("Stop promotions"), and common translations.
DEFAULT_OPT_OUT_KEYWORDS = (
    "STOP",
    "STOPALL",
    "STOP ALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "OPT OUT",
    "OPTOUT",
    "STOP PROMOTIONS",
    "ARRET",  # fr (ARRÊT matches too: accents are folded)
    "DESABONNER",  # fr
    "BAJA",  # es
    "PARAR",  # es, pt
    "STOPP",  # de, sv, no
    "ABMELDEN",  # de
    "SAIR",  # pt
    "DISISCRIVITI",  # it
    "AFMELDEN",  # nl
)
DEFAULT_OPT_OUT_PAYLOADS = ("STOP", "OPT_OUT", "UNSUBSCRIBE")


class ChannelPacing(BaseModel):
    """A channel's pacing defaults, for sender accounts that set nothing themselves (JSON in
    the environment, e.g. ``SENDONCE_PACING_LINKEDIN='{"min_spacing_seconds": 30}'``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_second: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)
    min_spacing_seconds: float = Field(default=0.0, ge=0)
    spacing_jitter_seconds: float = Field(default=0.0, ge=0)
    daily_message_cap: int | None = Field(default=None, ge=0)
    weekly_message_cap: int | None = Field(default=None, ge=0)
    daily_invitation_cap: int | None = Field(default=None, ge=0)
    weekly_invitation_cap: int | None = Field(default=None, ge=0)


class SenderPauses(BaseModel):
    """How long a sender is paused after a provider refused the sender itself, per cause (see
    ``shared.providers.http.PausePolicy``). An operator's ``sendonce sender resume`` lifts any
    pause early, e.g. once a revoked token was replaced."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    credentials: int = Field(default=3600, ge=60)
    throttle: int = Field(default=6 * 3600, ge=60)
    policy: int = Field(default=24 * 3600, ge=60)
    quota: int = Field(default=24 * 3600, ge=60)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SENDONCE_",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    # --- Postgres -------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "SENDONCE_DATABASE_URL"),
        description="libpq URL of the queue database. Wins over database_secret_id.",
    )
    database_secret_id: str | None = Field(
        default=None,
        description=(
            "Secrets Manager id whose SecretString is the database URL or RDS's JSON "
            "(username, password, host, port, dbname) (deployed stacks)."
        ),
    )
    db_tls_ca_bundle: str | None = Field(
        default=None,
        description=(
            "CA bundle file: when set, every non-loopback connection is sslmode=verify-full against "
            "it (deployed stacks: the RDS bundle in the layer). Unset, a non-loopback URL must still "
            "name sslmode=require or stronger."
        ),
    )
    db_host_override: str | None = Field(
        default=None,
        description="Connect here instead of the secret's host (RDS Proxy endpoint); same credentials.",
    )
    db_pool_max_size: int = Field(default=10, ge=1, le=100)
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    db_pool_wait_seconds: float = Field(
        default=2.0,
        gt=0,
        le=30,
        description="Dispatcher: longest wait for a pooled connection on the send path (in the stop margin).",
    )
    db_statement_timeout_seconds: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="Dispatcher: Postgres statement_timeout of its connections (in the stop margin).",
    )
    db_behind_pooler: bool = Field(
        default=False,
        description=(
            "The URL points at a transaction-mode pooler (PgBouncer, RDS Proxy): statement_timeout "
            "cannot travel as a startup option and must be a role default, checked at each dispatch."
        ),
    )
    db_prepare_threshold: int | None = Field(
        default=None,
        ge=0,
        description=(
            "psycopg prepare_threshold: executions before a statement is prepared server-side. "
            "None never prepares, which transaction-mode poolers without prepared-statement "
            "support (PgBouncer < 1.21) require."
        ),
    )

    # --- DynamoDB idempotency store ----------------------------------------------------------
    idempotency_table: str = Field(default="sendonce-idempotency", min_length=3)
    dynamodb_connect_timeout_seconds: float = Field(default=2.0, gt=0, le=10)
    dynamodb_read_timeout_seconds: float = Field(default=3.0, gt=0, le=30)
    dynamodb_max_attempts: int = Field(
        default=3, ge=1, le=10, description="attempts per DynamoDB call, the first included"
    )
    powertools_idempotency_disabled: bool = Field(
        default=False,
        validation_alias=AliasChoices("POWERTOOLS_IDEMPOTENCY_DISABLED"),
        description="Powertools' own switch that bypasses the gate; refused, never honoured.",
    )
    dedupe_window_seconds: int = Field(
        default=7 * 24 * 3600,
        ge=3600,
        description="How long an idempotency record blocks a second provider call for a message.",
    )

    # --- Dispatcher timing ------------------------------------------------------------------
    dispatcher_timeout_seconds: int = Field(
        default=150, ge=10, le=900, description="The dispatcher Lambda's Timeout (template.yaml)."
    )
    lease_margin_seconds: int = Field(
        default=30,
        ge=5,
        description="Added to the function timeout to absorb clock skew between Lambda and Postgres.",
    )
    provider_connect_timeout_seconds: float = Field(default=3.0, gt=0, le=30)
    provider_read_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    batch_size: int = Field(default=25, ge=1, le=500)
    send_concurrency: int = Field(default=8, ge=1, le=64)
    max_attempts: int = Field(default=5, ge=1, le=50)
    retry_base_seconds: float = Field(default=30.0, gt=0)
    retry_cap_seconds: float = Field(default=3600.0, gt=0)

    # --- Pacing -----------------------------------------------------------------------------
    # WhatsApp Cloud API: 80 messages/s per phone number by default (Meta, "Throughput",
    # developers.facebook.com/docs/whatsapp/throughput); 20/s here leaves room for numbers
    # shared with the WhatsApp Business app, whose limit is 20/s.
    pacing_whatsapp: ChannelPacing = ChannelPacing(rate_per_second=20, burst=20)
    # Messenger Send API: 300 calls/s per Page for text (providers.md); far below it.
    pacing_messenger: ChannelPacing = ChannelPacing(rate_per_second=10, burst=10)
    # LinkedIn through Unipile: "space actions randomly, about a minute apart, in working
    # hours; at least 10-20 s between messages"; paid accounts about 80-100 invitations a day
    # and about 200 a week (Unipile's LinkedIn limits guidance, providers.md).
    pacing_linkedin: ChannelPacing = ChannelPacing(
        min_spacing_seconds=30,
        spacing_jitter_seconds=60,
        daily_message_cap=100,
        daily_invitation_cap=80,
        weekly_invitation_cap=200,
    )
    send_gate_max_wait_seconds: float = Field(
        default=2.0,
        ge=0,
        le=30,
        description=(
            "Dispatcher: the longest a send waits for its sender's call slot (shared/call_slots.py) "
            "before its row goes back to the queue unsent. Waited within the invocation's time "
            "beyond the stop-claiming margin, never into it."
        ),
    )
    throttle_recovery_seconds: float = Field(
        default=300, gt=0, description="How long a throttled sender takes to climb back to its full rate."
    )
    sender_pause_seconds: SenderPauses = SenderPauses()

    # --- Campaign engine --------------------------------------------------------------------
    cross_campaign_window_seconds: int = Field(
        default=30 * 24 * 3600,
        ge=0,
        description=(
            "A contact queued or messaged by another campaign of the same sender within this "
            "window is skipped (per-campaign policy 'skip', the default)."
        ),
    )

    # --- Opt-out (shared.suppression) -------------------------------------------------------
    opt_out_keywords: list[str] = Field(
        default=list(DEFAULT_OPT_OUT_KEYWORDS),
        min_length=1,
        description=(
            "An inbound message whose whole text is one of these (case, accents of the stored "
            "keyword, surrounding spaces and punctuation aside) suppresses the contact and stops "
            "its sequences. JSON list."
        ),
    )
    opt_out_payloads: list[str] = Field(
        default=list(DEFAULT_OPT_OUT_PAYLOADS),
        description="Quick-reply / postback / button payloads that mean opt-out. JSON list.",
    )

    # --- Sweeper / reconciliation -----------------------------------------------------------
    sweeper_timeout_seconds: int = Field(default=120, ge=10, le=900)
    sweep_batch_size: int = Field(default=500, ge=1, le=10_000)
    unknown_grace_seconds: int = Field(default=900, ge=0)
    # Meta's 24-hour windows (WhatsApp customer service, Messenger standard messaging): a
    # free-form message to a contact who has not written in the window is held, not sent to
    # fail. Rechecked this often (a message from the contact reopens the window).
    channel_windows: bool = True
    window_recheck_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    unknown_policy_whatsapp: UnknownPolicy = "hold"
    unknown_policy_messenger: UnknownPolicy = "hold"
    unknown_policy_linkedin: UnknownPolicy = "hold"
    # --- Evidence of absence (policy ``resend_if_silent``, shared.absence) -------------------
    # Meta retries a webhook delivery our endpoint did not answer 200 "with decreasing
    # frequency until the request succeeds, for up to 7 days" (Meta, WhatsApp Cloud API,
    # "Webhooks", developers.facebook.com/docs/whatsapp/cloud-api/webhooks; also 360dialog,
    # docs.360dialog.com "Receiving messages": "up to 7 days with exponential backoff"; and
    # hookdeck.com "Guide to WhatsApp Webhooks": "exponential backoff for up to 7 days"). The
    # stored copy of Meta's page ends before that sentence; the two third-party pages agree.
    # Unipile "makes five retry attempts when the HTTP response code is not equal to 200 in
    # less than 30sec, with an incremental time delay" (developer.unipile.com/docs/webhooks-2).
    # Waiting out 7 days proves nothing a
    # campaign can use, so silence is never judged by time alone: a delivery our endpoint
    # failed is also a failure for the sender's other messages of that time (the handler
    # answers non-2xx only when Postgres is down or Lambda throttles, both endpoint-wide),
    # which the pipe condition (N messages within +-T) sees. G covers the normal status
    # latency (seconds) plus the first of Meta's retries and all 5 of Unipile's.
    absence_grace_seconds: int = Field(
        default=3600,
        ge=0,
        description="G: no provider event for the message this long after its attempt started.",
    )
    absence_min_pipe_messages: int = Field(
        default=3,
        ge=1,
        description="N: other messages of the same sender, sent within +-T, whose webhooks arrived.",
    )
    absence_window_seconds: int = Field(
        default=900,
        ge=1,
        description="T: half-width of the window around the attempt in which N is counted.",
    )
    failed_messages_queue_url: str | None = None

    # --- Providers --------------------------------------------------------------------------
    graph_api_base_url: str = "https://graph.facebook.com"
    graph_api_version: str = "v23.0"
    unipile_base_url: str = Field(default="https://api1.unipile.com:13111", description="https://{DSN}")
    whatsapp_token_secret_id: str = "sendonce/whatsapp-token"
    messenger_token_secret_id: str = "sendonce/messenger-page-token"
    unipile_api_key_secret_id: str = "sendonce/unipile-api-key"
    secret_cache_seconds: int = Field(default=300, ge=0, le=3600)
    # WhatsApp templates belong to a WhatsApp Business Account (WABA), not to a phone number:
    # GET /{waba-id}/message_templates (shared.channels.whatsapp.templates).
    whatsapp_business_accounts: dict[str, list[str]] = Field(
        default_factory=dict,
        description='JSON {"<waba-id>": ["<phone-number-id>", ...]}: the WABAs whose templates the '
        "sweeper keeps synced, and the phone numbers (WhatsApp sender accounts) each one owns.",
    )
    template_sync_interval_seconds: int = Field(
        default=3600,
        ge=60,
        le=86_400,
        description="How often the sweeper re-lists a WABA's templates; a failed one is retried every sweep.",
    )

    # --- Webhooks ---------------------------------------------------------------------------
    meta_app_secret_id: str = "sendonce/meta-app-secret"
    meta_verify_token_secret_id: str = "sendonce/meta-verify-token"
    unipile_webhook_secret_id: str = "sendonce/unipile-webhook-secret"

    @model_validator(mode="after")
    def _check_timing(self) -> Settings:
        if self.powertools_idempotency_disabled:
            raise ValueError(
                "POWERTOOLS_IDEMPOTENCY_DISABLED is set: it would bypass the gate that prevents "
                "duplicate sends; unset it"
            )
        if self.retry_cap_seconds < self.retry_base_seconds:
            raise ValueError("retry_cap_seconds must be >= retry_base_seconds")
        if self.stop_claiming_margin_ms * 2 >= self.dispatcher_timeout_seconds * 1000:
            raise ValueError(
                "dispatcher_timeout_seconds must be more than twice the stop-claiming margin "
                f"({self.stop_claiming_margin_ms / 1000:.1f}s: provider call budget plus two DynamoDB "
                "call budgets plus two Postgres statement budgets plus 5s), or invocations cannot "
                "finish a send"
            )
        return self

    @property
    def provider_call_budget_seconds(self) -> float:
        """Wall-clock budget of one provider call (pool wait, connect, write and read together),
        enforced as a deadline by ``shared.providers.deadline``."""
        return self.provider_connect_timeout_seconds * 2 + self.provider_read_timeout_seconds * 2

    @property
    def dynamodb_call_budget_seconds(self) -> float:
        """Wall-clock budget of one DynamoDB call with its retries and backoff, enforced by
        ``shared.bounded_calls.BoundedClient``."""
        return (
            self.dynamodb_connect_timeout_seconds + self.dynamodb_read_timeout_seconds
        ) * self.dynamodb_max_attempts

    @property
    def postgres_statement_budget_seconds(self) -> float:
        """Worst case of one send-path statement: the wait for a pooled connection, then the
        statement itself, cancelled by Postgres at ``statement_timeout``."""
        return self.db_pool_wait_seconds + self.db_statement_timeout_seconds

    @property
    def lease_seconds(self) -> int:
        """A claim outlives the invocation that made it: Lambda kills the invocation at its
        timeout, so once the lease has expired the claimant is provably dead."""
        return self.dispatcher_timeout_seconds + self.lease_margin_seconds

    @property
    def stop_claiming_margin_ms(self) -> int:
        """An invocation stops claiming (and releases claimed rows unsent) when less than this is
        left, so every send it starts, with both of its DynamoDB writes and both of its
        Postgres statements, finishes or times out before Lambda's deadline."""
        # Per message, each bounded by its own budget: mark_sending, the INPROGRESS write, the
        # provider call, the COMPLETED write, the settle statement.
        return int(
            (
                self.provider_call_budget_seconds
                + 2 * self.dynamodb_call_budget_seconds
                + 2 * self.postgres_statement_budget_seconds
                + 5
            )
            * 1000
        )

    @property
    def stale_release_budget_ms(self) -> int:
        """Extra time a send needs to release a record left by a writer Postgres proves
        delivered nothing: the proof read, the conditional delete and the second put. A send
        starts that detour only with this much to spare beyond the stop-claiming margin;
        otherwise it leaves the row to the sweeper, which releases the record itself."""
        return int((2 * self.dynamodb_call_budget_seconds + self.postgres_statement_budget_seconds) * 1000)

    @property
    def unknown_policies(self) -> dict[str, UnknownPolicy]:
        return {
            "whatsapp": self.unknown_policy_whatsapp,
            "messenger": self.unknown_policy_messenger,
            "linkedin": self.unknown_policy_linkedin,
        }


def load_settings() -> Settings:
    """Validate configuration at cold start; a bad value fails the init, loudly."""
    return Settings()
