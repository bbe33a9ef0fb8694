"""Every SQL statement sendonce runs, in one place.

Each state transition of ``send_queue`` is a compare-and-set on (id, expected status, claim
token): a statement that finds the row in any other state changes nothing, and the caller
learns it from the returned row count.
"""

from __future__ import annotations

from typing import LiteralString

# --- migrations --------------------------------------------------------------------------

MIGRATIONS_TABLE: LiteralString = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
# Serialises concurrent migrators (two deploys, or a deploy racing `make demo`).
MIGRATIONS_LOCK: LiteralString = "SELECT pg_advisory_xact_lock(hashtext('sendonce.migrations'))"
APPLIED_MIGRATIONS: LiteralString = "SELECT version, checksum FROM schema_migrations ORDER BY version"
RECORD_MIGRATION: LiteralString = (
    "INSERT INTO schema_migrations (version, checksum) VALUES (%(version)s, %(checksum)s)"
)

PING: LiteralString = "SELECT 1"

# --- claim ---------------------------------------------------------------------------------

# One statement claims a batch. SKIP LOCKED lets overlapping invocations take disjoint rows
# without waiting; the outer UPDATE re-checks status so a row can never be claimed twice.
# Rows of paused or disabled senders and of non-active campaigns are never claimed.
CLAIM_BATCH: LiteralString = """
WITH due AS (
    SELECT q.id
    FROM send_queue q
    WHERE q.status = 'pending'
      AND q.scheduled_for <= now()
      AND NOT EXISTS (
          SELECT 1 FROM sender_accounts s
          WHERE s.id = q.sender_account_id
            AND (s.status <> 'active' OR s.paused_until > now()))
      AND NOT EXISTS (
          SELECT 1 FROM campaigns cp
          WHERE cp.id = q.campaign_id AND cp.status <> 'active')
    ORDER BY q.scheduled_for, q.id
    LIMIT %(limit)s
    FOR UPDATE OF q SKIP LOCKED
)
UPDATE send_queue q
SET status = 'claimed',
    claim_token = %(claim_token)s,
    lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
    claimed_at = now(),
    attempts = q.attempts + 1,
    updated_at = now()
FROM due, contacts c, sender_accounts s
WHERE q.id = due.id
  AND q.status = 'pending'
  AND c.id = q.contact_id
  AND s.id = q.sender_account_id
RETURNING q.id AS queue_id, q.idempotency_key, q.attempts, q.max_attempts, q.message_type, q.body,
          c.channel, c.address AS recipient, s.id AS sender_account_id,
          s.provider_account_id AS sender_provider_id
"""

# --- transitions owned by the claimant -------------------------------------------------------

# The recovery point: committed before the idempotency record is written and before any
# provider call, so the sweeper knows a `claimed` row was never offered to a provider.
MARK_SENDING: LiteralString = """
UPDATE send_queue
SET status = 'sending', sending_started_at = now(), updated_at = now()
WHERE id = %(queue_id)s AND status = 'claimed' AND claim_token = %(claim_token)s
  AND lease_expires_at > now()
RETURNING id
"""

# Provider message id, queue status, ledger row and attempt record land in one statement.
# The attempt is recorded even when the CAS fails: the provider call did happen.
SETTLE_SENT: LiteralString = """
WITH settled AS (
    UPDATE send_queue
    SET status = 'sent', provider_message_id = %(provider_message_id)s, sent_at = now(),
        lease_expires_at = NULL, last_error = NULL, updated_at = now()
    WHERE id = %(queue_id)s AND status = %(expected_status)s::queue_status
      AND claim_token = %(claim_token)s
    RETURNING id, contact_id
), ledger AS (
    INSERT INTO message_ledger (queue_id, channel, provider_message_id, provider_thread_id, recipient,
                                recovered_from)
    SELECT s.id, c.channel, %(provider_message_id)s, %(provider_thread_id)s, c.address, %(recovered_from)s
    FROM settled s JOIN contacts c ON c.id = s.contact_id
    RETURNING queue_id
), attempt AS (
    INSERT INTO send_attempts (queue_id, attempt, claim_token, outcome, reason, detail, http_status)
    SELECT %(queue_id)s, %(attempt)s, %(claim_token)s, 'sent', %(reason)s, '', %(http_status)s
    WHERE %(record_attempt)s
)
SELECT count(*) AS settled FROM ledger
"""

# Back to pending: only for outcomes that prove the provider did not send.
SETTLE_PENDING: LiteralString = """
WITH settled AS (
    UPDATE send_queue
    SET status = 'pending', scheduled_for = now() + make_interval(secs => %(delay_seconds)s),
        attempts = attempts - %(refund_attempt)s::int,
        claim_token = NULL, lease_expires_at = NULL, last_error = %(last_error)s, updated_at = now()
    WHERE id = %(queue_id)s AND status = %(expected_status)s::queue_status
      AND claim_token = %(claim_token)s
    RETURNING id
), attempt AS (
    INSERT INTO send_attempts (queue_id, attempt, claim_token, outcome, reason, detail, http_status)
    SELECT %(queue_id)s, %(attempt)s, %(claim_token)s, %(outcome)s, %(reason)s, %(detail)s, %(http_status)s
    WHERE %(record_attempt)s
)
SELECT count(*) AS settled FROM settled
"""

SETTLE_TERMINAL: LiteralString = """
WITH settled AS (
    UPDATE send_queue
    SET status = %(new_status)s::queue_status, failure_reason = %(failure_reason)s,
        last_error = %(last_error)s, lease_expires_at = NULL, updated_at = now()
    WHERE id = %(queue_id)s AND status = %(expected_status)s::queue_status
      AND claim_token = %(claim_token)s
    RETURNING id
), attempt AS (
    INSERT INTO send_attempts (queue_id, attempt, claim_token, outcome, reason, detail, http_status)
    SELECT %(queue_id)s, %(attempt)s, %(claim_token)s, %(outcome)s, %(reason)s, %(detail)s, %(http_status)s
    WHERE %(record_attempt)s
)
SELECT count(*) AS settled FROM settled
"""

PAUSE_SENDER: LiteralString = """
UPDATE sender_accounts
SET paused_until = GREATEST(COALESCE(paused_until, now()), %(until)s),
    pause_reason = %(reason)s, updated_at = now()
WHERE id = %(sender_account_id)s
"""

# --- enqueue -------------------------------------------------------------------------------

UPSERT_SENDER: LiteralString = """
INSERT INTO sender_accounts (channel, provider_account_id)
VALUES (%(channel)s, %(provider_account_id)s)
ON CONFLICT (channel, provider_account_id) DO UPDATE SET updated_at = sender_accounts.updated_at
RETURNING id
"""

UPSERT_CAMPAIGN: LiteralString = """
INSERT INTO campaigns (id, name, sender_account_id)
VALUES (%(campaign_id)s, %(name)s, %(sender_account_id)s)
ON CONFLICT (id) DO NOTHING
"""

CAMPAIGN_SENDER: LiteralString = "SELECT sender_account_id FROM campaigns WHERE id = %(campaign_id)s"

UPSERT_CONTACTS: LiteralString = """
INSERT INTO contacts (channel, address, display_name)
SELECT %(channel)s, t.address, t.display_name
FROM unnest(%(addresses)s::text[], %(display_names)s::text[]) AS t(address, display_name)
ON CONFLICT (channel, address) DO NOTHING
"""

ADD_CAMPAIGN_CONTACTS: LiteralString = """
INSERT INTO campaign_contacts (campaign_id, contact_id)
SELECT %(campaign_id)s, c.id FROM contacts c
WHERE c.channel = %(channel)s AND c.address = ANY(%(addresses)s::text[])
ON CONFLICT DO NOTHING
"""

# The unique (campaign, contact, step) constraint makes a repeated or racing enqueue a no-op.
ENQUEUE_STEPS: LiteralString = """
INSERT INTO send_queue (campaign_id, contact_id, sender_account_id, message_type, body, scheduled_for,
                        max_attempts)
SELECT %(campaign_id)s, c.id, %(sender_account_id)s, st.message_type, st.body,
       now() + make_interval(secs => st.delay_seconds), %(max_attempts)s
FROM contacts c
CROSS JOIN unnest(%(message_types)s::text[], %(bodies)s::text[], %(delays)s::int[])
    AS st(message_type, body, delay_seconds)
WHERE c.channel = %(channel)s AND c.address = ANY(%(addresses)s::text[])
ON CONFLICT (campaign_id, contact_id, message_type) DO NOTHING
RETURNING id
"""

# --- reads ---------------------------------------------------------------------------------

QUEUE_STATUS_COUNTS: LiteralString = """
SELECT status::text AS status, count(*) AS n FROM send_queue
WHERE %(campaign_id)s::uuid IS NULL OR campaign_id = %(campaign_id)s::uuid
GROUP BY status
"""

QUEUE_ROW: LiteralString = "SELECT * FROM send_queue WHERE id = %(queue_id)s"

# --- sweeper -------------------------------------------------------------------------------

# A lock held by one sweeper at a time; others skip the run (every change is a CAS anyway,
# so this saves work rather than providing safety).
SWEEPER_TRY_LOCK: LiteralString = "SELECT pg_try_advisory_lock(hashtext('sendonce.sweeper')) AS locked"
SWEEPER_UNLOCK: LiteralString = "SELECT pg_advisory_unlock(hashtext('sendonce.sweeper'))"

# `claimed` rows were never offered to a provider (that happens only after `sending` is
# committed), so an expired claim goes straight back to the queue with its attempt refunded.
RELEASE_EXPIRED_CLAIMS: LiteralString = """
WITH expired AS (
    SELECT id FROM send_queue
    WHERE status = 'claimed' AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), released AS (
    UPDATE send_queue q
    SET status = 'pending', attempts = q.attempts - 1, claim_token = NULL, lease_expires_at = NULL,
        last_error = 'claim expired before sending; released', updated_at = now()
    FROM expired
    WHERE q.id = expired.id AND q.status = 'claimed' AND q.lease_expires_at < now()
    RETURNING q.id
), decided AS (
    INSERT INTO queue_decisions (queue_id, from_status, to_status, decided_by, reason)
    SELECT id, 'claimed', 'pending', 'sweeper', 'claim lease expired; provider never called' FROM released
)
SELECT count(*) AS released FROM released
"""

EXPIRED_SENDING: LiteralString = """
SELECT q.id AS queue_id, q.idempotency_key, q.claim_token, q.attempts, q.max_attempts, q.message_type,
       q.body, q.sending_started_at, c.channel, c.address AS recipient, s.id AS sender_account_id,
       s.provider_account_id AS sender_provider_id
FROM send_queue q
JOIN contacts c ON c.id = q.contact_id
JOIN sender_accounts s ON s.id = q.sender_account_id
WHERE q.status = 'sending' AND q.lease_expires_at < now()
ORDER BY q.lease_expires_at
LIMIT %(limit)s
"""

RECORD_DECISION: LiteralString = """
INSERT INTO queue_decisions (queue_id, from_status, to_status, decided_by, reason, evidence)
VALUES (%(queue_id)s, %(from_status)s, %(to_status)s, %(decided_by)s, %(reason)s, %(evidence)s)
"""

STALE_OWNED_ROWS: LiteralString = """
SELECT count(*) AS n FROM send_queue
WHERE status IN ('claimed', 'sending') AND lease_expires_at < now() - make_interval(secs => %(grace_seconds)s)
"""

UNKNOWN_ROWS: LiteralString = "SELECT count(*) AS n FROM send_queue WHERE status = 'unknown'"

DEAD_LETTER_BATCH: LiteralString = """
SELECT q.id AS queue_id, q.idempotency_key, q.campaign_id, c.channel::text AS channel, c.address AS recipient,
       q.message_type, q.attempts, q.failure_reason, q.last_error, q.updated_at AS failed_at
FROM send_queue q JOIN contacts c ON c.id = q.contact_id
WHERE q.status = 'failed' AND q.dead_lettered_at IS NULL
ORDER BY q.updated_at
LIMIT %(limit)s
FOR UPDATE OF q SKIP LOCKED
"""

MARK_DEAD_LETTERED: LiteralString = """
UPDATE send_queue SET dead_lettered_at = now() WHERE id = ANY(%(queue_ids)s::bigint[])
"""

# --- operator reads ------------------------------------------------------------------------

UNSETTLED_ROWS: LiteralString = """
SELECT q.id AS queue_id, q.status::text AS status, c.channel::text AS channel, c.address AS recipient,
       q.message_type, q.attempts, q.failure_reason, q.updated_at
FROM send_queue q JOIN contacts c ON c.id = q.contact_id
WHERE q.status IN ('failed', 'unknown')
ORDER BY q.id
LIMIT %(limit)s
"""

NEXT_PENDING: LiteralString = """
SELECT count(*) AS pending, EXTRACT(EPOCH FROM min(scheduled_for) - now()) AS seconds_until_due
FROM send_queue WHERE status = 'pending'
"""
