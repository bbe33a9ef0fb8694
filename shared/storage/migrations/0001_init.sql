-- sendonce schema, version 1.
-- Every uniqueness rule the seed incidents wished they had is a constraint here, so no code
-- path (old, new or hand-written SQL) can create a duplicate queue row or ledger row.

CREATE TYPE channel AS ENUM ('whatsapp', 'linkedin', 'messenger');

-- pending -> claimed -> sending -> sent; sending -> pending | failed | unknown
CREATE TYPE queue_status AS ENUM ('pending', 'claimed', 'sending', 'sent', 'failed', 'unknown');

CREATE TABLE sender_accounts (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    channel             channel NOT NULL,
    provider_account_id text NOT NULL CHECK (provider_account_id <> ''),
    display_name        text NOT NULL DEFAULT '',
    status              text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    paused_until        timestamptz,
    pause_reason        text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (channel, provider_account_id)
);

CREATE TABLE campaigns (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name              text NOT NULL,
    sender_account_id uuid NOT NULL REFERENCES sender_accounts (id),
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('draft', 'active', 'paused', 'done')),
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE contacts (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    channel      channel NOT NULL,
    address      text NOT NULL CHECK (address <> ''),
    display_name text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (channel, address)
);

CREATE TABLE campaign_contacts (
    campaign_id uuid NOT NULL REFERENCES campaigns (id),
    contact_id  uuid NOT NULL REFERENCES contacts (id),
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, contact_id)
);

-- Deterministic idempotency key of one message: same (campaign, contact, step), same key, in
-- every process. Declared IMMUTABLE because its output depends on nothing but its inputs
-- (convert_to with an explicit UTF8 target), which generated columns require.
CREATE FUNCTION sendonce_idempotency_key(campaign uuid, contact uuid, message_type text)
RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT 'so1-' || encode(sha256(convert_to(campaign::text || ':' || contact::text || ':' || message_type,
                                              'UTF8')), 'hex')
$$;

CREATE TABLE send_queue (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id         uuid NOT NULL REFERENCES campaigns (id),
    contact_id          uuid NOT NULL REFERENCES contacts (id),
    sender_account_id   uuid NOT NULL REFERENCES sender_accounts (id),
    message_type        text NOT NULL CHECK (message_type <> ''),
    body                text NOT NULL CHECK (body <> ''),
    -- Derived, never supplied, so DynamoDB records and provider webhooks correlate without a
    -- lookup table and no caller can invent a key.
    idempotency_key     text GENERATED ALWAYS AS (
        sendonce_idempotency_key(campaign_id, contact_id, message_type)) STORED,
    status              queue_status NOT NULL DEFAULT 'pending',
    scheduled_for       timestamptz NOT NULL DEFAULT now(),
    attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts        integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    claim_token         uuid,
    lease_expires_at    timestamptz,
    claimed_at          timestamptz,
    sending_started_at  timestamptz,
    provider_message_id text,
    sent_at             timestamptz,
    last_error          text,
    failure_reason      text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT send_queue_campaign_contact_step_unique UNIQUE (campaign_id, contact_id, message_type),
    CONSTRAINT send_queue_idempotency_key_unique UNIQUE (idempotency_key),
    CONSTRAINT send_queue_owned_rows_have_lease CHECK (
        status NOT IN ('claimed', 'sending') OR (claim_token IS NOT NULL AND lease_expires_at IS NOT NULL)
    ),
    CONSTRAINT send_queue_sent_rows_have_provider_id CHECK (
        status <> 'sent' OR (provider_message_id IS NOT NULL AND sent_at IS NOT NULL)
    )
);

-- Claiming reads only due pending rows, in order: O(batch) however many sent rows pile up.
CREATE INDEX send_queue_due ON send_queue (scheduled_for, id) WHERE status = 'pending';
-- Sweeping reads only owned rows by lease expiry.
CREATE INDEX send_queue_leases ON send_queue (lease_expires_at) WHERE status IN ('claimed', 'sending');
-- Reconciliation reads only unknown rows.
CREATE INDEX send_queue_unknown ON send_queue (updated_at) WHERE status = 'unknown';
CREATE INDEX send_queue_by_contact ON send_queue (contact_id);

-- One row per message the provider accepted. Unique on the queue row and on the provider's
-- own id, so neither a second send nor a replayed webhook can add a second entry.
CREATE TABLE message_ledger (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue_id            bigint NOT NULL REFERENCES send_queue (id),
    channel             channel NOT NULL,
    provider_message_id text NOT NULL,
    provider_thread_id  text,
    recipient           text NOT NULL,
    sent_at             timestamptz NOT NULL DEFAULT now(),
    delivery_status     text NOT NULL DEFAULT 'accepted'
        CHECK (delivery_status IN ('accepted', 'delivered', 'read', 'failed')),
    delivery_updated_at timestamptz,
    recovered_from      text NOT NULL DEFAULT 'dispatch'
        CHECK (recovered_from IN ('dispatch', 'idempotency_record', 'webhook', 'read_back', 'operator')),
    CONSTRAINT message_ledger_queue_unique UNIQUE (queue_id),
    CONSTRAINT message_ledger_provider_id_unique UNIQUE (channel, provider_message_id)
);

-- Every provider call, successful or not: the audit trail seed 000 could not produce.
CREATE TABLE send_attempts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue_id      bigint NOT NULL REFERENCES send_queue (id),
    attempt       integer NOT NULL,
    claim_token   uuid NOT NULL,
    outcome       text NOT NULL,
    reason        text NOT NULL DEFAULT '',
    detail        text NOT NULL DEFAULT '',
    http_status   integer,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX send_attempts_by_queue ON send_attempts (queue_id);
