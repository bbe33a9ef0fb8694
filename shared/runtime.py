"""Builds the dependencies a handler passes to the library, once per Lambda container.

Nothing here is needed by tests that construct dependencies themselves; handlers call
``dispatch_deps()`` and friends, which cache one instance per process (a cold start).
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable
from functools import cache, partial
from typing import Any

import boto3
import botocore
import httpx
from aws_lambda_powertools.utilities import parameters
from botocore.config import Config as BotoConfig

from shared.bounded_calls import BoundedClient
from shared.channels.whatsapp.templates import TemplateSync
from shared.config import Settings, load_settings
from shared.dispatch import DispatchDeps
from shared.idempotency import SendGuard
from shared.pacing import policy_from_settings
from shared.providers.outcome import Channel
from shared.providers.registry import build_adapters, build_read_backs, build_resolvers, make_http_client
from shared.providers.secrets import TokenProvider, TokenSource
from shared.queue import QueueRepository
from shared.storage import dsn
from shared.storage.db import Database
from shared.suppression import OptOutRules
from shared.sweeper import SweepDeps
from shared.webhooks import ProviderEventStore, SecretsManagerWebhookSecrets, WebhookDeps

_lock = threading.RLock()  # builders call cached() for shared pieces (the database)

# botocore rebuilds its default User-Agent (about 16 sanitised components) twice for every
# request; a supplied user_agent is used as is (botocore/useragent.py
# UserAgentString.to_string, its legacy branch). On the dispatcher's two DynamoDB requests per
# message that saves about a tenth of their client CPU (`python -m devstack.bench.client_cpu`).
AWS_USER_AGENT = f"sendonce botocore/{botocore.__version__} Python/{platform.python_version()}"


class ConfigurationError(RuntimeError):
    pass


@cache
def settings() -> Settings:
    return load_settings()


def database_url(config: Settings) -> str:
    """The conninfo to connect with: from the URL or the secret (a URL or RDS's JSON), with the
    TLS ``shared.storage.dsn.secure`` requires."""
    if config.database_url is not None:
        raw = config.database_url.get_secret_value()
    elif config.database_secret_id:
        value = parameters.get_secret(config.database_secret_id, max_age=config.secret_cache_seconds)
        if not isinstance(value, str) or not value.strip():
            raise ConfigurationError(f"secret {config.database_secret_id} holds no database URL")
        raw = value
    else:
        raise ConfigurationError("set DATABASE_URL or SENDONCE_DATABASE_SECRET_ID")
    try:
        return dsn.secure(
            dsn.from_secret(raw), ca_bundle=config.db_tls_ca_bundle, host_override=config.db_host_override
        )
    except dsn.DatabaseUrlError as exc:
        raise ConfigurationError(str(exc)) from None


def build_database(config: Settings, *, send_path: bool = False) -> Database:
    """``send_path``: the dispatcher's database, whose statements and pool waits are in the
    stop-claiming margin and therefore bounded. Other functions run long statements on
    purpose (large enqueues, migrations, operator queries) and keep Postgres' defaults."""
    return Database(
        # Resolved per new connection (the secret cached for secret_cache_seconds): a rotated
        # password reaches warm containers without a restart.
        lambda: database_url(config),
        max_size=config.db_pool_max_size,
        connect_timeout_seconds=config.db_connect_timeout_seconds,
        pool_wait_seconds=config.db_pool_wait_seconds if send_path else None,
        statement_timeout_seconds=config.db_statement_timeout_seconds if send_path else None,
        behind_pooler=config.db_behind_pooler,
        prepare_threshold=config.db_prepare_threshold,
    )


def dynamodb_config(config: Settings, *, user_agent: str | None = AWS_USER_AGENT) -> BotoConfig:
    """Explicit, short timeouts with bounded standard-mode retries: the defaults (60 s reads,
    legacy retries) could spend a whole invocation on one write. ``total_max_attempts`` counts
    the first request; botocore's ``max_attempts`` would not. Those bound each socket
    operation and attempt; ``BoundedClient`` bounds the call, backoff included, to the
    budget the stop-claiming margin counts. ``user_agent=None`` keeps botocore's default (the
    CPU benchmark compares the two)."""
    return BotoConfig(
        connect_timeout=config.dynamodb_connect_timeout_seconds,
        read_timeout=config.dynamodb_read_timeout_seconds,
        retries={"mode": "standard", "total_max_attempts": config.dynamodb_max_attempts},
        # The requests are built by Powertools and shared.idempotency from fixed shapes;
        # botocore's client-side check of each one against the service model was 5% of
        # the dispatcher's CPU per message in a profile (devstack/bench/profile_dispatch.py).
        # DynamoDB still validates every request it receives.
        parameter_validation=False,
        user_agent=user_agent,
    )


def dynamodb_client(config: Settings) -> Any:
    client = boto3.client("dynamodb", config=dynamodb_config(config))
    return BoundedClient(client, config.dynamodb_call_budget_seconds)


def build_guard(config: Settings) -> SendGuard:
    client = dynamodb_client(config)
    return SendGuard.for_table(config.idempotency_table, config.dedupe_window_seconds, boto3_client=client)


def build_dispatch_deps(config: Settings, db: Database) -> DispatchDeps:
    client, tokens = make_http_client(config), TokenSource(config)
    return DispatchDeps(
        settings=config,
        queue=QueueRepository(db, policy_from_settings(config)),
        guard=build_guard(config),
        adapters=build_adapters(config, client, tokens),
        resolvers=build_resolvers(config, client, tokens, db),
    )


_cache: dict[str, object] = {}


def cached[T](name: str, build: Callable[[], T]) -> T:
    """One instance per container. A failed build is not cached, so the next invocation
    retries (for example once the database is reachable again)."""
    with _lock:
        if name not in _cache:
            _cache[name] = build()
        return _cache[name]  # type: ignore[return-value]


def database() -> Database:
    return cached("database", lambda: build_database(settings()))


def dispatch_database() -> Database:
    return cached("dispatch-database", lambda: build_database(settings(), send_path=True))


def build_sweep_deps(config: Settings, db: Database) -> SweepDeps:
    client, tokens = make_http_client(config), TokenSource(config)
    return SweepDeps(
        settings=config,
        queue=QueueRepository(db, policy_from_settings(config)),
        guard=build_guard(config),
        sqs=boto3.client("sqs") if config.failed_messages_queue_url else None,
        read_back=build_read_backs(config, client, tokens),
        templates=build_template_sync(config, client, tokens) if config.whatsapp_business_accounts else None,
    )


def build_template_sync(config: Settings, client: httpx.Client, tokens: TokenProvider) -> TemplateSync:
    return TemplateSync(
        client=client,
        base_url=config.graph_api_base_url,
        version=config.graph_api_version,
        business_accounts=config.whatsapp_business_accounts,
        token=partial(tokens.token_for, Channel.WHATSAPP),
        interval_seconds=config.template_sync_interval_seconds,
    )


def sweep_deps() -> SweepDeps:
    return cached("sweep", lambda: build_sweep_deps(settings(), database()))


def dispatch_deps() -> DispatchDeps:
    return cached("dispatch", lambda: build_dispatch_deps(settings(), dispatch_database()))


def build_webhook_deps(config: Settings, db: Database) -> WebhookDeps:
    secrets = parameters.SecretsProvider(boto3_client=boto3.client("secretsmanager"))
    return WebhookDeps(
        store=ProviderEventStore(db, OptOutRules.from_settings(config)),
        secrets=SecretsManagerWebhookSecrets(config, secrets),
    )


def webhook_deps() -> WebhookDeps:
    return cached("webhook", lambda: build_webhook_deps(settings(), database()))
