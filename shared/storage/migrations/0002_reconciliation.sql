-- sendonce schema, version 2: dead-letter outbox, provider events, operator decisions.

-- A failed row is published to the failed-messages queue once; NULL means not yet.
ALTER TABLE send_queue ADD COLUMN dead_lettered_at timestamptz;
CREATE INDEX send_queue_dead_letter_outbox ON send_queue (updated_at)
    WHERE status = 'failed' AND dead_lettered_at IS NULL;

-- Webhook deliveries, stored verbatim and de-duplicated by the provider's own identity of the
-- event, so a retried or replayed delivery is stored once.
CREATE TABLE provider_events (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel             channel NOT NULL,
    event_type          text NOT NULL,
    dedupe_key          text NOT NULL,
    idempotency_key     text,
    provider_message_id text,
    provider_thread_id  text,
    recipient           text,
    status              text,
    occurred_at         timestamptz,
    payload             jsonb NOT NULL,
    received_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT provider_events_dedupe_unique UNIQUE (channel, dedupe_key)
);
CREATE INDEX provider_events_by_key ON provider_events (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX provider_events_by_message ON provider_events (channel, provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- Every decision taken on a row by reconciliation or an operator, with who and why.
CREATE TABLE queue_decisions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue_id    bigint NOT NULL REFERENCES send_queue (id),
    from_status queue_status NOT NULL,
    to_status   queue_status NOT NULL,
    decided_by  text NOT NULL,
    reason      text NOT NULL,
    evidence    jsonb,
    decided_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX queue_decisions_by_queue ON queue_decisions (queue_id);

-- The duplicate detector looks up recent ledger rows per recipient.
CREATE INDEX message_ledger_by_recipient ON message_ledger (channel, recipient, sent_at);
