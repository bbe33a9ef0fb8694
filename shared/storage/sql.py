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
# Schema changes on a large table may legitimately run long: lift a role-default statement
# timeout (set for poolers, see docs/deploy.md) for the migration's own transaction only.
MIGRATIONS_NO_STATEMENT_TIMEOUT: LiteralString = "SET LOCAL statement_timeout = 0"
# Serialises concurrent migrators (two deploys, or a deploy racing `make demo`).
MIGRATIONS_LOCK: LiteralString = "SELECT pg_advisory_xact_lock(hashtext('sendonce.migrations'))"
APPLIED_MIGRATIONS: LiteralString = "SELECT version, checksum FROM schema_migrations ORDER BY version"
RECORD_MIGRATION: LiteralString = (
    "INSERT INTO schema_migrations (version, checksum) VALUES (%(version)s, %(checksum)s)"
)

# The newest applied migration: what the dispatcher and sweeper compare with the code's.
SCHEMA_VERSION: LiteralString = "SELECT max(version) AS version FROM schema_migrations"

PING: LiteralString = "SELECT 1"
# What this session really runs with (a startup option, a role default, a pooler's setting).
STATEMENT_TIMEOUT_MS: LiteralString = (
    "SELECT setting::bigint AS statement_timeout_ms FROM pg_settings WHERE name = 'statement_timeout'"
)

# --- claim ---------------------------------------------------------------------------------

# A claim serves senders, not rows. It locks the rows of senders that have something due and
# may send now (active, not paused, inside their window, past their next spacing slot), in
# round-robin order (least recently served first), skipping senders another claim is serving.
# Holding a sender's row lock until the claim commits is what makes its budget (tokens,
# spacing slot, caps) one budget for every overlapping dispatcher. The due-row probe is one
# index seek per (sender, action, campaign): O(senders), never O(backlog).
LOCK_DUE_SENDERS: LiteralString = """
SELECT s.id, s.channel::text AS channel,
       s.rate_per_second, s.burst, s.min_spacing_seconds, s.spacing_jitter_seconds,
       s.daily_message_cap, s.weekly_message_cap, s.daily_invitation_cap, s.weekly_invitation_cap,
       s.timezone, s.window_days, s.window_start, s.window_end,
       s.warmup_started_at, s.warmup_days, s.warmup_start_daily,
       s.tokens, s.tokens_at, s.next_slot_at, s.throttle_factor, s.throttled_at
FROM sender_accounts s
WHERE s.status = 'active'
  AND (s.paused_until IS NULL OR s.paused_until <= %(now)s)
  AND (s.next_slot_at IS NULL OR s.next_slot_at <= %(now)s)
  AND sendonce_window_open(%(now)s, s.timezone, s.window_days, s.window_start, s.window_end)
  AND EXISTS (
      SELECT 1
      FROM campaign_senders cs
      JOIN campaigns cp ON cp.id = cs.campaign_id AND cp.status = 'active'
      CROSS JOIN (VALUES ('message'), ('invitation')) AS a(action)
      WHERE cs.sender_account_id = s.id
        AND EXISTS (SELECT 1 FROM send_queue q
                    WHERE q.sender_account_id = s.id AND q.action = a.action AND q.campaign_id = cs.campaign_id
                      AND q.status = 'pending' AND q.scheduled_for <= %(now)s))
ORDER BY s.last_claimed_at NULLS FIRST, s.id
LIMIT %(limit)s
FOR UPDATE OF s SKIP LOCKED
"""

# When a claim found nothing: the earliest instant a sender with due rows may be served again
# (its spacing slot or Retry-After hold, or now when another claim held its lock). NULL when no
# active, unpaused sender inside its window has anything due: the dispatcher can stop.
NEXT_CLAIMABLE: LiteralString = """
SELECT min(GREATEST(COALESCE(s.next_slot_at, %(now)s), %(now)s)) AS at
FROM sender_accounts s
WHERE s.status = 'active'
  AND (s.paused_until IS NULL OR s.paused_until <= %(now)s)
  AND sendonce_window_open(%(now)s, s.timezone, s.window_days, s.window_start, s.window_end)
  AND EXISTS (
      SELECT 1
      FROM campaign_senders cs
      JOIN campaigns cp ON cp.id = cs.campaign_id AND cp.status = 'active'
      CROSS JOIN (VALUES ('message'), ('invitation')) AS a(action)
      WHERE cs.sender_account_id = s.id
        AND EXISTS (SELECT 1 FROM send_queue q
                    WHERE q.sender_account_id = s.id AND q.action = a.action AND q.campaign_id = cs.campaign_id
                      AND q.status = 'pending' AND q.scheduled_for <= %(now)s))
"""

# Rows of capped senders that may have reached the provider, per action, since the start of
# the rolling week; `today` counts those since the sender's local midnight.
SENDER_USAGE: LiteralString = """
SELECT q.sender_account_id, q.action,
       count(*) FILTER (WHERE q.claimed_at >= u.day_start) AS today, count(*) AS this_week
FROM unnest(%(sender_ids)s::uuid[], %(day_starts)s::timestamptz[]) AS u(sender_id, day_start)
JOIN send_queue q ON q.sender_account_id = u.sender_id AND q.claimed_at >= %(week_start)s
WHERE q.status IN ('claimed', 'sending', 'sent', 'unknown')
GROUP BY q.sender_account_id, q.action
"""

# Claims the planned number of rows per (sender, action), at most `total` per sender, taking
# turns between the sender's active campaigns (round-robin: each campaign's first due row,
# then each one's second, ...). Every lane is an index range read of at most its quota, so
# the statement is O(rows claimed). The senders' row locks, held by this transaction, keep
# other claims off these rows; the status re-check guards against the sweeper and cancels.
CLAIM_PLANNED: LiteralString = """
WITH plan AS (
    SELECT * FROM unnest(%(sender_ids)s::uuid[], %(actions)s::text[], %(quotas)s::int[], %(totals)s::int[])
        AS p(sender_id, action, quota, total)
), lanes AS (
    SELECT p.sender_id, p.action, p.quota, p.total, cs.campaign_id
    FROM plan p
    JOIN campaign_senders cs ON cs.sender_account_id = p.sender_id
    JOIN campaigns cp ON cp.id = cs.campaign_id AND cp.status = 'active'
), candidates AS (
    SELECT l.sender_id, l.action, l.quota, l.total, due.id, due.scheduled_for,
           row_number() OVER (PARTITION BY l.sender_id, l.action, l.campaign_id
                              ORDER BY due.scheduled_for, due.id) AS turn
    FROM lanes l
    CROSS JOIN LATERAL (
        SELECT q.id, q.scheduled_for FROM send_queue q
        WHERE q.sender_account_id = l.sender_id AND q.action = l.action AND q.campaign_id = l.campaign_id
          AND q.status = 'pending' AND q.scheduled_for <= %(now)s
        ORDER BY q.scheduled_for, q.id
        LIMIT l.quota
    ) AS due
), within_quota AS (
    SELECT c.*, row_number() OVER (PARTITION BY c.sender_id, c.action
                                   ORDER BY c.turn, c.scheduled_for, c.id) AS action_pick
    FROM candidates c
), picked AS (
    SELECT w.id FROM (
        SELECT w.id, w.total, row_number() OVER (PARTITION BY w.sender_id
                                                 ORDER BY w.turn, w.scheduled_for, w.id) AS sender_pick
        FROM within_quota w
        WHERE w.action_pick <= w.quota
    ) AS w
    WHERE w.sender_pick <= w.total
)
UPDATE send_queue q
SET status = 'claimed',
    claim_token = %(claim_token)s,
    lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
    claimed_at = %(now)s,
    attempts = q.attempts + 1,
    updated_at = now()
FROM picked, contacts c, sender_accounts s
WHERE q.id = picked.id
  AND q.status = 'pending'
  AND c.id = q.contact_id
  AND s.id = q.sender_account_id
RETURNING q.id AS queue_id, q.idempotency_key, q.attempts, q.max_attempts, q.message_type, q.body,
          q.content, q.action, c.channel, c.address AS recipient, s.id AS sender_account_id,
          s.provider_account_id AS sender_provider_id, c.last_inbound_at, c.provider_profile_id
"""

# The budgets of the senders a claim served, written back before its transaction commits.
SAVE_BUDGETS: LiteralString = """
UPDATE sender_accounts s
SET tokens = b.tokens, tokens_at = b.tokens_at, next_slot_at = b.next_slot_at,
    throttle_factor = b.throttle_factor, throttled_at = b.throttled_at, last_claimed_at = b.served_at
FROM unnest(%(ids)s::uuid[], %(tokens)s::float8[], %(tokens_at)s::timestamptz[],
            %(next_slot_at)s::timestamptz[], %(throttle_factor)s::float8[], %(throttled_at)s::timestamptz[],
            %(served_at)s::timestamptz[])
     AS b(id, tokens, tokens_at, next_slot_at, throttle_factor, throttled_at, served_at)
WHERE s.id = b.id
"""

# A throttle answer's new budget; unlike a claim, it does not count as serving the sender.
SAVE_THROTTLED_BUDGET: LiteralString = """
UPDATE sender_accounts s
SET tokens = b.tokens, tokens_at = b.tokens_at, next_slot_at = b.next_slot_at,
    throttle_factor = b.throttle_factor, throttled_at = b.throttled_at
FROM unnest(%(ids)s::uuid[], %(tokens)s::float8[], %(tokens_at)s::timestamptz[],
            %(next_slot_at)s::timestamptz[], %(throttle_factor)s::float8[], %(throttled_at)s::timestamptz[])
     AS b(id, tokens, tokens_at, next_slot_at, throttle_factor, throttled_at)
WHERE s.id = b.id
"""

# A throttle answer: the budget changes under the sender's row lock, as in a claim.
LOCK_SENDER_BUDGET: LiteralString = """
SELECT s.tokens, s.tokens_at, s.next_slot_at, s.throttle_factor, s.throttled_at
FROM sender_accounts s WHERE s.id = %(sender_account_id)s
FOR UPDATE
"""

# --- the send-time gate (shared/call_slots.py) ------------------------------------------------

# A rate-paced sender's call slot: the next free one, 1/rate after the one before, taken only if
# it starts within the caller's wait limit. clock_timestamp(), not now(): each statement reads
# the database's clock when it runs, the one clock every dispatcher shares. The grant is stamped
# on the row for the audit, under its claim token.
TAKE_RATE_CALL_SLOT: LiteralString = """
WITH slot AS (
    INSERT INTO sender_call_slots AS s (sender_account_id, next_call_at)
    VALUES (%(sender_account_id)s, clock_timestamp() + make_interval(secs => %(gap_seconds)s))
    ON CONFLICT (sender_account_id) DO UPDATE
    SET next_call_at = GREATEST(s.next_call_at, clock_timestamp()) + make_interval(secs => %(gap_seconds)s)
    WHERE s.next_call_at <= clock_timestamp() + make_interval(secs => %(max_wait_seconds)s)
    RETURNING s.next_call_at - make_interval(secs => %(gap_seconds)s) AS granted_at
), stamped AS (
    UPDATE send_queue q SET call_granted_at = slot.granted_at
    FROM slot
    WHERE q.id = %(queue_id)s AND q.claim_token = %(claim_token)s
)
SELECT granted_at, GREATEST(0.0, EXTRACT(epoch FROM granted_at - clock_timestamp()))::float8 AS wait_seconds
FROM slot
"""

# A spaced sender's call: granted only when its last granted call is at least the spacing ago
# (a compare-and-set on last_call_at), so granted calls are never closer than the spacing
# whenever each caller wakes up.
TAKE_SPACED_CALL_SLOT: LiteralString = """
WITH slot AS (
    INSERT INTO sender_call_slots AS s (sender_account_id, next_call_at, last_call_at)
    VALUES (%(sender_account_id)s, clock_timestamp(), clock_timestamp())
    ON CONFLICT (sender_account_id) DO UPDATE
    SET last_call_at = clock_timestamp(), next_call_at = GREATEST(s.next_call_at, clock_timestamp())
    WHERE s.last_call_at IS NULL
       OR s.last_call_at <= clock_timestamp() - make_interval(secs => %(gap_seconds)s)
    RETURNING s.last_call_at AS granted_at
), stamped AS (
    UPDATE send_queue q SET call_granted_at = slot.granted_at
    FROM slot
    WHERE q.id = %(queue_id)s AND q.claim_token = %(claim_token)s
)
SELECT granted_at, 0.0::float8 AS wait_seconds FROM slot
"""

# When a refused caller could have its slot: seconds from now on the database's clock.
CALL_SLOT_WAIT: LiteralString = """
SELECT GREATEST(0.0, EXTRACT(epoch FROM
           CASE WHEN %(spaced)s THEN s.last_call_at + make_interval(secs => %(gap_seconds)s)
                ELSE s.next_call_at END - clock_timestamp()))::float8 AS wait_seconds
FROM sender_call_slots s
WHERE s.sender_account_id = %(sender_account_id)s
"""

# --- transitions owned by the claimant -------------------------------------------------------

# Closes a statement whose open first CTE is `settled`: every provider call is recorded, even
# when the CAS finds the row taken over, because the call happened.
_RECORD_ATTEMPT: LiteralString = """), attempt AS (
    INSERT INTO send_attempts (queue_id, attempt, claim_token, outcome, reason, detail, http_status, writer)
    SELECT %(queue_id)s, %(attempt)s, %(claim_token)s, %(outcome)s, %(reason)s, %(detail)s, %(http_status)s,
           %(writer)s
    WHERE %(record_attempt)s
)
SELECT count(*) AS settled FROM settled
"""

# The active suppression (shared.suppression) of a queue row's contact, workspace-wide or for
# the row's sender. Read by the recovery point, so a contact suppressed after its row was queued,
# or even claimed, is never sent to: the row ends `cancelled`. One index probe per row.
_SUPPRESSION_OF_ROW: LiteralString = """
        SELECT s.reason FROM contacts c
        JOIN suppressions s ON s.channel = c.channel AND s.address = c.address AND s.removed_at IS NULL
        WHERE c.id = q.contact_id
          AND (s.sender_account_id IS NULL OR s.sender_account_id = q.sender_account_id)
        ORDER BY s.created_at LIMIT 1
    """

# The recovery point: committed before the idempotency record is written and before any
# provider call, so the sweeper knows a `claimed` row was never offered to a provider.
# It is also the last moment a row can be held back: a row whose contact's sequence was
# stopped (a reply, an opt-out, an operator), whose contact is suppressed, or whose campaign is
# no longer active since the claim goes to `cancelled`, or back to `pending` with its attempt
# refunded when the campaign is paused. Read in the statement that moves the row, so a stop committed before this
# statement is always seen; one committed after it is later than the point of no return.
MARK_SENDING: LiteralString = (
    """
WITH verdict AS (
    SELECT q.id,
           CASE WHEN heard.provider_message_id IS NOT NULL THEN 'unknown'
                WHEN sup.reason IS NOT NULL OR cc.sequence_state IN ('stopped', 'skipped')
                     OR cp.status NOT IN ('active', 'paused')
                    THEN 'cancelled'
                WHEN cp.status = 'paused' THEN 'pending'
                ELSE 'sending'
           END AS next_status,
           CASE WHEN heard.provider_message_id IS NOT NULL
                    THEN 'the provider reported an earlier attempt (a webhook carrying its key, message '
                         || heard.provider_message_id || ') after the row was requeued; '
                         || 'left for the reconciler to settle sent from that evidence'
                WHEN sup.reason IS NOT NULL THEN 'suppressed: ' || sup.reason
                WHEN cc.sequence_state IN ('stopped', 'skipped')
                    THEN 'sequence stopped: ' || COALESCE(cc.stopped_reason, cc.sequence_state)
                ELSE 'campaign ' || cp.status
           END AS why
    FROM send_queue q
    JOIN campaigns cp ON cp.id = q.campaign_id
    LEFT JOIN campaign_contacts cc ON cc.campaign_id = q.campaign_id AND cc.contact_id = q.contact_id
    LEFT JOIN LATERAL ("""
    + _SUPPRESSION_OF_ROW
    + """) AS sup ON true
    -- The key is the row's for life, so a webhook carrying it means an earlier attempt reached
    -- the provider: a row requeued on evidence of absence (or by an operator) whose webhook
    -- came late. Sending again would be the duplicate; it goes back to `unknown` instead.
    -- Only a row that was in `sending` before can have been heard of (sending_started_at is
    -- set on entering it and never cleared), so a first send, nearly every send, skips the probe.
    LEFT JOIN LATERAL (
        SELECT e.provider_message_id FROM provider_events e
        WHERE q.sending_started_at IS NOT NULL
          AND e.idempotency_key = q.idempotency_key AND e.provider_message_id IS NOT NULL
        LIMIT 1
    ) AS heard ON true
    WHERE q.id = %(queue_id)s AND q.status = 'claimed' AND q.claim_token = %(claim_token)s
      AND q.lease_expires_at > now()
), moved AS (
    UPDATE send_queue q
    SET status = v.next_status::queue_status,
        sending_started_at = CASE WHEN v.next_status = 'sending' THEN now() ELSE q.sending_started_at END,
        attempts = CASE WHEN v.next_status IN ('pending', 'unknown') THEN q.attempts - 1 ELSE q.attempts END,
        reconciled_at = CASE WHEN v.next_status = 'unknown' THEN NULL ELSE q.reconciled_at END,
        claim_token = CASE WHEN v.next_status = 'pending' THEN NULL ELSE q.claim_token END,
        lease_expires_at = CASE WHEN v.next_status = 'sending' THEN q.lease_expires_at END,
        failure_reason = CASE WHEN v.next_status = 'cancelled' THEN v.why ELSE q.failure_reason END,
        last_error = CASE v.next_status WHEN 'sending' THEN q.last_error
                                        WHEN 'unknown' THEN 'not sent again: ' || v.why
                                        ELSE 'not sent: ' || v.why END,
        updated_at = now()
    FROM verdict v
    WHERE q.id = v.id AND q.status = 'claimed' AND q.claim_token = %(claim_token)s
      AND q.lease_expires_at > now()
    RETURNING q.id, v.next_status, v.why
), decided AS (
    INSERT INTO queue_decisions (queue_id, from_status, to_status, decided_by, reason)
    SELECT id, 'claimed', next_status::queue_status, 'dispatcher', why FROM moved WHERE next_status <> 'sending'
)
SELECT next_status AS status FROM moved
"""
)

QUEUE_ROW_STATUS: LiteralString = "SELECT status::text AS status FROM send_queue WHERE id = %(queue_id)s"

# Provider message id, queue status, ledger row and attempt record land in one statement.
# The attempt is recorded even when the CAS fails: the provider call did happen.
#
# The same statement queues the contact's next step, so every path that settles a row `sent`
# (the dispatcher, the sweeper's recovery from the idempotency record, the reconciler, an
# operator's mark-sent) advances the sequence, and a crash cannot separate the two. The next
# step is due delay_seconds after this one was sent, moved into the sender's window; ON
# CONFLICT keeps (campaign, contact, step) unique however many processes race. The contact's
# sequence row is locked first: a stop (reply, opt-out, cancel) either committed before and
# is seen here, so nothing is queued, or waits for this statement and then cancels what it
# queued (shared.sequences stops in two statements for exactly this).
SETTLE_SENT: LiteralString = """
WITH settled AS (
    UPDATE send_queue
    SET status = 'sent', provider_message_id = %(provider_message_id)s, sent_at = now(),
        lease_expires_at = NULL, last_error = NULL, updated_at = now()
    WHERE id = %(queue_id)s AND status = %(expected_status)s::queue_status
      AND claim_token = %(claim_token)s
    RETURNING id, contact_id, campaign_id, sender_account_id, message_type, max_attempts, sent_at
), ledger AS (
    INSERT INTO message_ledger (queue_id, channel, provider_message_id, provider_thread_id, recipient,
                                recovered_from)
    SELECT s.id, c.channel, %(provider_message_id)s, %(provider_thread_id)s, c.address, %(recovered_from)s
    FROM settled s JOIN contacts c ON c.id = s.contact_id
    RETURNING queue_id
), attempt AS (
    INSERT INTO send_attempts (queue_id, attempt, claim_token, outcome, reason, detail, http_status, writer)
    SELECT %(queue_id)s, %(attempt)s, %(claim_token)s, 'sent', %(reason)s, '', %(http_status)s, %(writer)s
    WHERE %(record_attempt)s
), sequence AS (
    SELECT cc.campaign_id, cc.contact_id, cc.sender_account_id, s.message_type, s.max_attempts, s.sent_at,
           cc.rendered_bodies
    FROM settled s
    JOIN campaign_contacts cc ON cc.campaign_id = s.campaign_id AND cc.contact_id = s.contact_id
    WHERE cc.sequence_state IN ('active', 'halted')
    FOR UPDATE OF cc
), next_step AS (
    SELECT q.campaign_id, q.contact_id, q.sender_account_id, q.max_attempts, q.sent_at,
           nxt.message_type, COALESCE(q.rendered_bodies[nxt.position], nxt.body) AS body, nxt.content,
           nxt.action, nxt.delay_seconds, nxt.after_event, nxt.event_timeout_seconds, nxt.send_at
    FROM sequence q
    JOIN campaigns cp ON cp.id = q.campaign_id AND cp.status IN ('active', 'paused')
    JOIN campaign_steps cur ON cur.campaign_id = q.campaign_id AND cur.message_type = q.message_type
    JOIN campaign_steps nxt ON nxt.campaign_id = q.campaign_id AND nxt.position = cur.position + 1
), queued AS (
    INSERT INTO send_queue (campaign_id, contact_id, sender_account_id, message_type, body, content, action,
                            scheduled_for, max_attempts)
    SELECT n.campaign_id, n.contact_id, n.sender_account_id, n.message_type, n.body, n.content, n.action,
           CASE WHEN sa.window_start IS NULL AND sa.window_days IS NULL
                THEN GREATEST(n.sent_at + make_interval(secs => n.delay_seconds), n.send_at)
                ELSE sendonce_next_window_open(GREATEST(n.sent_at + make_interval(secs => n.delay_seconds), n.send_at),
                                               sa.timezone, sa.window_days, sa.window_start, sa.window_end)
           END,
           n.max_attempts
    FROM next_step n JOIN sender_accounts sa ON sa.id = n.sender_account_id
    -- A step that waits for an event is queued when the event arrives (QUEUE_AFTER_EVENT);
    -- the sequence stays active meanwhile.
    WHERE n.after_event IS NULL
    ON CONFLICT (campaign_id, contact_id, message_type) DO NOTHING
    RETURNING id
), progressed AS (
    UPDATE campaign_contacts cc
    SET sequence_state = CASE WHEN EXISTS (SELECT 1 FROM next_step) THEN 'active' ELSE 'completed' END,
        -- When the next step waits for an event: how long it may wait (EXPIRE_EVENT_WAITS).
        event_wait_until = (SELECT n.sent_at + make_interval(secs => n.event_timeout_seconds)
                            FROM next_step n WHERE n.after_event IS NOT NULL),
        stop_cause = NULL, stopped_reason = NULL, stopped_at = NULL
    FROM sequence q
    WHERE cc.campaign_id = q.campaign_id AND cc.contact_id = q.contact_id
)
SELECT count(*) AS settled FROM ledger
"""

# Back to pending: only for outcomes that prove the provider did not send.
SETTLE_PENDING: LiteralString = (
    """
WITH settled AS (
    UPDATE send_queue
    SET status = 'pending', scheduled_for = now() + make_interval(secs => %(delay_seconds)s),
        attempts = attempts - %(refund_attempt)s::int,
        claim_token = NULL, lease_expires_at = NULL, last_error = %(last_error)s, updated_at = now()
    WHERE id = %(queue_id)s AND status = %(expected_status)s::queue_status
      AND claim_token = %(claim_token)s
    RETURNING id
"""
    + _RECORD_ATTEMPT
)

# `failed` or `unknown`: nothing follows such a step, and the contact's sequence records why
# (halted). If the step is sent after all (redrive, evidence, an operator), SETTLE_SENT
# resumes the sequence.
SETTLE_TERMINAL: LiteralString = (
    """
WITH settled AS (
    UPDATE send_queue
    SET status = %(new_status)s::queue_status, failure_reason = %(failure_reason)s,
        last_error = %(last_error)s, lease_expires_at = NULL, updated_at = now()
    WHERE id = %(queue_id)s AND status = %(expected_status)s::queue_status
      AND claim_token = %(claim_token)s
    RETURNING id, campaign_id, contact_id, message_type
), halted AS (
    UPDATE campaign_contacts cc
    SET sequence_state = 'halted', stop_cause = %(new_status)s::text, stopped_at = now(),
        stopped_reason = 'step ' || s.message_type || ' ended ' || %(new_status)s::text || ': '
                         || %(failure_reason)s::text
    FROM settled s
    WHERE cc.campaign_id = s.campaign_id AND cc.contact_id = s.contact_id AND cc.sequence_state = 'active'
    RETURNING cc.contact_id
"""
    + _RECORD_ATTEMPT
)

# Proof that a writer's call delivered nothing: it was never made (the record write failed),
# or the provider's answer proves it was not sent (queue.PROOF_OF_NO_DELIVERY). Such a
# writer's leftover INPROGRESS record may be released.
WRITER_PROVED_UNSENT: LiteralString = """
SELECT EXISTS (
    SELECT 1 FROM send_attempts
    WHERE queue_id = %(queue_id)s AND writer = %(writer)s AND outcome = ANY(%(proof_outcomes)s::text[])
) AS proved
"""

# A provider refused the sender: pause it (never shortening a longer pause) and record why.
PAUSE_SENDER: LiteralString = """
WITH paused AS (
    UPDATE sender_accounts
    SET paused_until = GREATEST(COALESCE(paused_until, now()), %(until)s),
        pause_reason = %(reason)s, paused_by = %(paused_by)s, updated_at = now()
    WHERE id = %(sender_account_id)s
    RETURNING id, paused_until
)
INSERT INTO sender_decisions (sender_account_id, action, decided_by, reason, paused_until)
SELECT id, 'pause', %(paused_by)s, %(reason)s, paused_until FROM paused
"""

# --- sender accounts, for operators -----------------------------------------------------------

SENDER_BY_NATURAL_KEY: LiteralString = """
SELECT * FROM sender_accounts WHERE channel = %(channel)s::channel AND provider_account_id = %(provider_account_id)s
"""

CONFIGURE_SENDER: LiteralString = """
WITH configured AS (
    UPDATE sender_accounts
    SET rate_per_second = %(rate_per_second)s, burst = %(burst)s,
        min_spacing_seconds = %(min_spacing_seconds)s, spacing_jitter_seconds = %(spacing_jitter_seconds)s,
        daily_message_cap = %(daily_message_cap)s, weekly_message_cap = %(weekly_message_cap)s,
        daily_invitation_cap = %(daily_invitation_cap)s, weekly_invitation_cap = %(weekly_invitation_cap)s,
        timezone = %(timezone)s, window_days = %(window_days)s::smallint[],
        window_start = %(window_start)s, window_end = %(window_end)s,
        warmup_started_at = %(warmup_started_at)s, warmup_days = %(warmup_days)s,
        warmup_start_daily = %(warmup_start_daily)s,
        -- A new configuration is judged afresh: a park computed from the old one is dropped.
        next_slot_at = NULL, updated_at = now()
    WHERE id = %(id)s
    RETURNING id
)
INSERT INTO sender_decisions (sender_account_id, action, decided_by, reason)
SELECT id, 'configure', %(operator)s, 'pacing configured' FROM configured
RETURNING id
"""

# An operator's pause: the end of time when no end is given, so only a resume lifts it (not
# 'infinity', which Python's datetime cannot hold).
OPERATOR_PAUSE_SENDER: LiteralString = """
WITH paused AS (
    UPDATE sender_accounts
    SET paused_until = COALESCE(%(until)s::timestamptz, '9999-12-31 00:00:00+00'), pause_reason = %(reason)s,
        paused_by = %(paused_by)s, updated_at = now()
    WHERE id = %(id)s
    RETURNING id, paused_until
)
INSERT INTO sender_decisions (sender_account_id, action, decided_by, reason, paused_until)
SELECT id, 'pause', %(paused_by)s, %(reason)s, paused_until FROM paused
RETURNING id
"""

RESUME_SENDER: LiteralString = """
WITH resumed AS (
    UPDATE sender_accounts
    SET paused_until = NULL, pause_reason = NULL, paused_by = NULL, next_slot_at = NULL, updated_at = now()
    WHERE id = %(id)s
    RETURNING id
)
INSERT INTO sender_decisions (sender_account_id, action, decided_by, reason)
SELECT id, 'resume', %(operator)s, 'resumed' FROM resumed
RETURNING id
"""

SENDER_ROW_COUNTS: LiteralString = """
SELECT count(*) AS pending, count(*) FILTER (WHERE scheduled_for <= %(now)s) AS due
FROM send_queue WHERE sender_account_id = %(id)s AND status = 'pending'
"""

# --- enqueue -------------------------------------------------------------------------------

# Read before the enqueue transaction, so numbers are normalised without holding the sender
# row locked; UPSERT_SENDER returns the region again and enqueue re-checks it.
SENDER_DEFAULT_REGION: LiteralString = """
SELECT default_region FROM sender_accounts
WHERE channel = %(channel)s AND provider_account_id = %(provider_account_id)s
"""

# A request without a region keeps the stored one; a request with one sets it. The row is
# rewritten only when the region changes: an enqueue holds its transaction open while it adds
# thousands of contacts, and a rewritten sender row makes every insert that references it
# (the next step a settle queues) wait for that whole transaction. Returns no row when nothing
# changed; SENDER_BY_NATURAL_KEY then reads it, in a statement that sees a concurrent insert.
UPSERT_SENDER: LiteralString = """
INSERT INTO sender_accounts (channel, provider_account_id, default_region)
VALUES (%(channel)s, %(provider_account_id)s, %(default_region)s)
ON CONFLICT (channel, provider_account_id) DO UPDATE
SET default_region = EXCLUDED.default_region, updated_at = now()
WHERE EXCLUDED.default_region IS NOT NULL
  AND EXCLUDED.default_region IS DISTINCT FROM sender_accounts.default_region
RETURNING id, default_region
"""

# A campaign an enqueue names for the first time starts `active` with that sender as its pool.
UPSERT_CAMPAIGN: LiteralString = """
INSERT INTO campaigns (id, name, sender_account_id, status, cross_campaign_policy)
VALUES (%(campaign_id)s, %(name)s, %(sender_account_id)s, %(status)s, %(cross_campaign_policy)s)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

ADD_CAMPAIGN_SENDER: LiteralString = """
INSERT INTO campaign_senders (campaign_id, sender_account_id)
VALUES (%(campaign_id)s, %(sender_account_id)s)
ON CONFLICT DO NOTHING
"""

CAMPAIGN_POOL: LiteralString = """
SELECT s.id, s.channel::text AS channel, s.provider_account_id
FROM campaign_senders cs JOIN sender_accounts s ON s.id = cs.sender_account_id
WHERE cs.campaign_id = %(campaign_id)s
ORDER BY s.provider_account_id
"""

INSERT_CAMPAIGN_STEPS: LiteralString = """
INSERT INTO campaign_steps (campaign_id, position, message_type, body, delay_seconds, action, content,
                            after_event, event_timeout_seconds, send_at, send_at_timezone)
SELECT %(campaign_id)s, st.position, st.message_type, st.body, st.delay_seconds, st.action, st.content,
       st.after_event, st.event_timeout_seconds, st.send_at, st.send_at_timezone
FROM unnest(%(message_types)s::text[], %(bodies)s::text[], %(delays)s::int[], %(actions)s::text[],
            %(contents)s::jsonb[], %(after_events)s::text[], %(event_timeouts)s::int[],
            %(send_ats)s::timestamptz[], %(send_at_timezones)s::text[])
     WITH ORDINALITY AS st(message_type, body, delay_seconds, action, content, after_event,
                           event_timeout_seconds, send_at, send_at_timezone, position)
ON CONFLICT DO NOTHING
"""

CAMPAIGN_STEPS: LiteralString = """
SELECT position, message_type, body, delay_seconds, action, content, after_event, event_timeout_seconds, send_at
FROM campaign_steps WHERE campaign_id = %(campaign_id)s ORDER BY position
"""

UPSERT_CONTACTS: LiteralString = """
INSERT INTO contacts (channel, address, display_name)
SELECT %(channel)s, t.address, t.display_name
FROM unnest(%(addresses)s::text[], %(display_names)s::text[]) AS t(address, display_name)
ON CONFLICT (channel, address) DO NOTHING
"""

# The cross-campaign check reads other campaigns' rows for these contacts; two campaigns
# queueing one contact at once must not both miss each other's uncommitted rows. Every
# enqueue and start therefore locks its contacts first (in address order, as UPSERT_CONTACTS
# inserts them, so two lockers never wait on each other in a cycle) and checks afterwards, in
# a later statement whose snapshot includes whatever the previous holder committed. Row locks
# rather than advisory locks: 50,000 contacts would overflow the shared lock table. FOR NO
# KEY UPDATE does not conflict with the KEY SHARE locks of foreign-key checks, so sends and
# settles that reference these contacts are never held up.
LOCK_CONTACTS: LiteralString = """
SELECT c.id, c.address FROM contacts c
WHERE c.channel = %(channel)s::channel AND c.address = ANY(%(addresses)s::text[])
ORDER BY c.address
FOR NO KEY UPDATE
"""

LOCK_WAITING_CONTACTS: LiteralString = """
SELECT c.id, c.address FROM contacts c
JOIN campaign_contacts cc ON cc.contact_id = c.id
WHERE cc.campaign_id = %(campaign_id)s AND cc.sequence_state = 'waiting'
ORDER BY c.address
FOR NO KEY UPDATE OF c
"""

# Existing members are filtered out before the insert: a unique check against a membership
# row a settle or a stop is updating would wait for that transaction, and the settle may be
# waiting for this one (a deadlock). ON CONFLICT still covers two enqueues adding one member.
# Each new member carries its rendered texts (a JSON array, or NULL), written once here.
ADD_CAMPAIGN_CONTACTS: LiteralString = """
INSERT INTO campaign_contacts (campaign_id, contact_id, sequence_state, rendered_bodies)
SELECT %(campaign_id)s, t.id, 'waiting',
       CASE WHEN t.rendered IS NULL THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(t.rendered)) END
FROM unnest(%(contact_ids)s::uuid[], %(rendered)s::jsonb[]) AS t(id, rendered)
WHERE NOT EXISTS (SELECT 1 FROM campaign_contacts cc
                  WHERE cc.campaign_id = %(campaign_id)s AND cc.contact_id = t.id)
ON CONFLICT DO NOTHING
"""

# Seed 000: the same person in two campaigns of one sender. A waiting contact is skipped when
# another campaign has a row for it from any sender of this campaign's pool that is still to
# be sent, or was queued or sent within the window (a cancelled row never reached anyone).
SKIP_RECENTLY_CONTACTED: LiteralString = """
WITH pool AS (
    SELECT sender_account_id FROM campaign_senders WHERE campaign_id = %(campaign_id)s
), conflicts AS (
    SELECT DISTINCT ON (cc.contact_id) cc.contact_id, q.campaign_id AS other_campaign, q.status::text AS status,
           s.provider_account_id
    FROM campaign_contacts cc
    JOIN send_queue q ON q.contact_id = cc.contact_id AND q.campaign_id <> cc.campaign_id
    JOIN pool p ON p.sender_account_id = q.sender_account_id
    JOIN sender_accounts s ON s.id = q.sender_account_id
    WHERE cc.campaign_id = %(campaign_id)s AND cc.sequence_state = 'waiting'
      AND cc.contact_id = ANY(%(contact_ids)s::uuid[])
      AND q.status <> 'cancelled'
      AND (q.status IN ('pending', 'claimed', 'sending')
           OR q.created_at >= now() - make_interval(secs => %(window_seconds)s)
           OR q.sent_at >= now() - make_interval(secs => %(window_seconds)s))
    ORDER BY cc.contact_id, q.created_at DESC
)
UPDATE campaign_contacts cc
SET sequence_state = 'skipped', stop_cause = 'cross_campaign', stopped_at = now(),
    stopped_reason = 'campaign ' || c.other_campaign || ' has a ' || c.status || ' row for this contact from sender '
                     || c.provider_account_id || ' (cross-campaign policy, window '
                     || %(window_seconds)s::int || ' s)'
FROM conflicts c
WHERE cc.campaign_id = %(campaign_id)s AND cc.contact_id = c.contact_id AND cc.sequence_state = 'waiting'
RETURNING cc.contact_id
"""

# How many contacts each sender of the pool carries in this campaign (balancing's tie-break).
POOL_ASSIGNED_CONTACTS: LiteralString = """
SELECT sender_account_id, count(*) AS contacts FROM campaign_contacts
WHERE campaign_id = %(campaign_id)s AND sender_account_id IS NOT NULL
GROUP BY sender_account_id
"""

POOL_SENDERS_FOR_ASSIGNMENT: LiteralString = """
SELECT s.*, (SELECT count(*) FROM send_queue q
             WHERE q.sender_account_id = s.id AND q.status = 'pending' AND q.action = %(action)s) AS pending
FROM campaign_senders cs JOIN sender_accounts s ON s.id = cs.sender_account_id
WHERE cs.campaign_id = %(campaign_id)s
ORDER BY s.id
"""

# A contact's sender is set once, when it starts its sequence, and every row of its sequence
# is sent from it (QUEUE_FIRST_STEP and SETTLE_SENT read it from here).
ASSIGN_SENDERS: LiteralString = """
UPDATE campaign_contacts cc
SET sender_account_id = a.sender_account_id, sequence_state = 'active'
FROM unnest(%(contact_ids)s::uuid[], %(sender_ids)s::uuid[]) AS a(contact_id, sender_account_id)
WHERE cc.campaign_id = %(campaign_id)s AND cc.contact_id = a.contact_id AND cc.sequence_state = 'waiting'
RETURNING cc.contact_id
"""

# Only for contacts whose sequence this call started (never one already running, whose step 1
# a settle may be updating: its unique check would wait on that settle).
QUEUE_FIRST_STEP: LiteralString = """
INSERT INTO send_queue (campaign_id, contact_id, sender_account_id, message_type, body, content, action,
                        scheduled_for, max_attempts)
SELECT cc.campaign_id, cc.contact_id, cc.sender_account_id, st.message_type,
       COALESCE(cc.rendered_bodies[1], st.body), st.content, st.action,
       CASE WHEN s.window_start IS NULL AND s.window_days IS NULL
            THEN GREATEST(now() + make_interval(secs => st.delay_seconds), st.send_at, cp.send_at)
            ELSE sendonce_next_window_open(GREATEST(now() + make_interval(secs => st.delay_seconds),
                                                    st.send_at, cp.send_at),
                                           s.timezone, s.window_days, s.window_start, s.window_end)
       END,
       %(max_attempts)s
FROM campaign_contacts cc
JOIN campaigns cp ON cp.id = cc.campaign_id
JOIN campaign_steps st ON st.campaign_id = cc.campaign_id AND st.position = 1
JOIN sender_accounts s ON s.id = cc.sender_account_id
WHERE cc.campaign_id = %(campaign_id)s AND cc.contact_id = ANY(%(contact_ids)s::uuid[])
  AND cc.sequence_state = 'active'
ON CONFLICT (campaign_id, contact_id, message_type) DO NOTHING
RETURNING id, sender_account_id
"""

MEMBERSHIP_STATES: LiteralString = """
SELECT cc.contact_id, cc.sequence_state, cc.stop_cause FROM campaign_contacts cc
WHERE cc.campaign_id = %(campaign_id)s AND cc.contact_id = ANY(%(contact_ids)s::uuid[])
"""

# --- campaigns -------------------------------------------------------------------------------

CREATE_CAMPAIGN: LiteralString = """
INSERT INTO campaigns (id, name, sender_account_id, status, cross_campaign_policy, stop_on_events)
VALUES (%(campaign_id)s, %(name)s, %(sender_account_id)s, 'draft', %(cross_campaign_policy)s,
        %(stop_on_events)s::text[])
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

CAMPAIGN_ROW: LiteralString = """
SELECT cp.id, cp.name, cp.status, cp.cross_campaign_policy, cp.stop_on_events, cp.created_at, cp.updated_at,
       s.channel::text AS channel
FROM campaigns cp JOIN sender_accounts s ON s.id = cp.sender_account_id
WHERE cp.id = %(campaign_id)s
"""

# Enqueues and starts hold the campaign row in SHARE mode: they run side by side, while a
# pause, cancel or completion (which update it) waits for them and then sees their rows.
LOCK_CAMPAIGN_SHARED: LiteralString = "SELECT status FROM campaigns WHERE id = %(campaign_id)s FOR SHARE"
LOCK_CAMPAIGN: LiteralString = "SELECT status FROM campaigns WHERE id = %(campaign_id)s FOR NO KEY UPDATE"

SET_CAMPAIGN_STATUS: LiteralString = """
WITH changed AS (
    UPDATE campaigns SET status = %(to_status)s, updated_at = now()
    WHERE id = %(campaign_id)s AND status = ANY(%(from_statuses)s::text[])
    RETURNING id
)
INSERT INTO campaign_decisions (campaign_id, action, from_status, to_status, decided_by, reason)
SELECT id, %(action)s, %(from_status)s, %(to_status)s, %(decided_by)s, %(reason)s FROM changed
RETURNING campaign_id
"""

RECORD_CAMPAIGN_DECISION: LiteralString = """
INSERT INTO campaign_decisions (campaign_id, action, from_status, to_status, decided_by, reason)
VALUES (%(campaign_id)s, %(action)s, %(from_status)s, %(to_status)s, %(decided_by)s, %(reason)s)
"""

# A cancel stops every running sequence of the campaign (locked in key order, like every stop)
# and then, in a later statement, cancels what is queued: that statement sees any step a
# concurrent settle queued before it found the contact stopped.
STOP_CAMPAIGN_SEQUENCES: LiteralString = """
WITH target AS (
    SELECT cc.campaign_id, cc.contact_id FROM campaign_contacts cc
    WHERE cc.campaign_id = %(campaign_id)s AND cc.sequence_state IN ('waiting', 'active', 'halted')
    ORDER BY cc.campaign_id, cc.contact_id
    FOR UPDATE OF cc
)
UPDATE campaign_contacts cc
SET sequence_state = 'stopped', stop_cause = 'campaign_cancelled', stopped_reason = %(reason)s, stopped_at = now()
FROM target t
WHERE cc.campaign_id = t.campaign_id AND cc.contact_id = t.contact_id
RETURNING cc.contact_id
"""

# Pending and claimed rows; a `sending` row is in flight and settles normally.
CANCEL_CAMPAIGN_ROWS: LiteralString = """
WITH target AS (
    SELECT id, status FROM send_queue
    WHERE campaign_id = %(campaign_id)s AND status IN ('pending', 'claimed')
    FOR UPDATE
), cancelled AS (
    UPDATE send_queue q
    SET status = 'cancelled', failure_reason = %(reason)s, last_error = 'not sent: ' || %(reason)s::text,
        lease_expires_at = NULL, updated_at = now()
    FROM target t
    WHERE q.id = t.id AND q.status = t.status
    RETURNING q.id, t.status AS from_status
), decided AS (
    INSERT INTO queue_decisions (queue_id, from_status, to_status, decided_by, reason)
    SELECT id, from_status, 'cancelled', %(decided_by)s, %(reason)s FROM cancelled
)
SELECT count(*) AS cancelled FROM cancelled
"""

# Whether campaign `cp` has nothing queued or in flight, nobody waiting to start, and no
# `unknown` row that could still turn `sent` and lead to a next step. Pending rows are probed
# per pool sender and action (send_queue_due_by_sender); claimed, sending and unknown rows are
# few, and read through their own partial indexes (send_queue_leases, send_queue_unknown). No
# index of its own: one whose predicate covered these statuses would compete with the claim's
# and the sweeper's plans.
_NOTHING_LEFT: LiteralString = """
      NOT EXISTS (SELECT 1 FROM campaign_senders cs
                  CROSS JOIN (VALUES ('message'), ('invitation')) AS a(action)
                  JOIN send_queue q ON q.sender_account_id = cs.sender_account_id AND q.action = a.action
                                   AND q.campaign_id = cs.campaign_id AND q.status = 'pending'
                  WHERE cs.campaign_id = cp.id)
  AND NOT EXISTS (SELECT 1 FROM send_queue q
                  WHERE q.campaign_id = cp.id AND q.status IN ('claimed', 'sending'))
  AND NOT EXISTS (SELECT 1 FROM campaign_contacts cc WHERE cc.campaign_id = cp.id AND cc.sequence_state = 'waiting')
  AND NOT EXISTS (SELECT 1 FROM send_queue q
                  JOIN campaign_steps cur ON cur.campaign_id = q.campaign_id AND cur.message_type = q.message_type
                  JOIN campaign_steps nxt ON nxt.campaign_id = q.campaign_id AND nxt.position = cur.position + 1
                  JOIN campaign_contacts cc ON cc.campaign_id = q.campaign_id AND cc.contact_id = q.contact_id
                  WHERE q.campaign_id = cp.id AND q.status = 'unknown' AND cc.sequence_state = 'halted')
  -- A sequence waiting for a provider event (an invitation not yet accepted) is not done.
  AND NOT EXISTS (SELECT 1 FROM campaign_contacts cc
                  JOIN send_queue q ON q.campaign_id = cc.campaign_id AND q.contact_id = cc.contact_id
                                   AND q.status = 'sent'
                  JOIN campaign_steps cur ON cur.campaign_id = q.campaign_id AND cur.message_type = q.message_type
                  JOIN campaign_steps nxt ON nxt.campaign_id = q.campaign_id AND nxt.position = cur.position + 1
                  WHERE cc.campaign_id = cp.id AND cc.sequence_state = 'active' AND nxt.after_event IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM send_queue w WHERE w.campaign_id = cc.campaign_id
                                    AND w.contact_id = cc.contact_id AND w.message_type = nxt.message_type))
"""

# Sequences that waited for a provider event longer than the step allows (counted from the
# previous step's send, kept as campaign_contacts.event_wait_until by SETTLE_SENT): stopped for
# good, so the campaign can complete. An index range over the deadlines passed, not a read of the
# sent rows. A webhook queueing the step at the same moment either committed first (then NOT
# EXISTS sees its row and the wait is over) or finds the sequence stopped; a row it queued
# regardless is cancelled by mark_sending.
EXPIRE_EVENT_WAITS: LiteralString = """
WITH expired AS (
    SELECT cc.campaign_id, cc.contact_id, nxt.after_event, nxt.event_timeout_seconds
    FROM campaign_contacts cc
    JOIN campaigns cp ON cp.id = cc.campaign_id AND cp.status IN ('active', 'paused')
    JOIN campaign_steps nxt ON nxt.campaign_id = cc.campaign_id AND nxt.after_event IS NOT NULL
    JOIN campaign_steps cur ON cur.campaign_id = nxt.campaign_id AND cur.position = nxt.position - 1
    WHERE cc.event_wait_until < now() AND cc.sequence_state = 'active'
      AND EXISTS (SELECT 1 FROM send_queue q WHERE q.campaign_id = cc.campaign_id
                  AND q.contact_id = cc.contact_id AND q.message_type = cur.message_type AND q.status = 'sent')
      AND NOT EXISTS (SELECT 1 FROM send_queue w WHERE w.campaign_id = cc.campaign_id
                      AND w.contact_id = cc.contact_id AND w.message_type = nxt.message_type)
    ORDER BY cc.event_wait_until
    LIMIT %(limit)s
    FOR UPDATE OF cc SKIP LOCKED
)
UPDATE campaign_contacts cc
SET sequence_state = 'stopped', stop_cause = 'event_timeout', stopped_at = now(), event_wait_until = NULL,
    stopped_reason = 'no ' || e.after_event || ' event within '
                     || round(e.event_timeout_seconds / 86400.0, 1) || ' days of the previous step'
FROM expired e
WHERE cc.campaign_id = e.campaign_id AND cc.contact_id = e.contact_id AND cc.sequence_state = 'active'
RETURNING cc.campaign_id, cc.contact_id
"""

COMPLETABLE_CAMPAIGNS: LiteralString = (
    """
SELECT cp.id FROM campaigns cp
WHERE cp.status = 'active' AND
"""
    + _NOTHING_LEFT
    + """
ORDER BY cp.created_at
LIMIT %(limit)s
"""
)

# Run after LOCK_CAMPAIGN in the same transaction: this statement's snapshot includes every
# row an enqueue (which held the row in SHARE mode) committed.
COMPLETE_CAMPAIGN: LiteralString = (
    """
WITH done AS (
    UPDATE campaigns cp SET status = 'completed', updated_at = now()
    WHERE cp.id = %(campaign_id)s AND cp.status = 'active' AND
"""
    + _NOTHING_LEFT
    + """
    RETURNING cp.id
)
INSERT INTO campaign_decisions (campaign_id, action, from_status, to_status, decided_by, reason)
SELECT id, 'complete', 'active', 'completed', 'sweeper', 'nothing left to send' FROM done
RETURNING campaign_id
"""
)

# Rows that raced a stop: a step queued by a settle that saw the contact before the stop, a
# sending row that went back to pending, a claim the sweeper released. They could never be
# sent (MARK_SENDING refuses them); this settles them so campaigns can complete. Driven by
# recent stops (an index range), never by the whole backlog.
CANCEL_STRAGGLERS: LiteralString = """
WITH stale AS (
    SELECT q.id, cc.stopped_reason
    FROM campaign_contacts cc
    JOIN send_queue q ON q.campaign_id = cc.campaign_id AND q.contact_id = cc.contact_id AND q.status = 'pending'
    WHERE cc.sequence_state = 'stopped' AND cc.stopped_at > now() - make_interval(secs => %(lookback_seconds)s)
    LIMIT %(limit)s
    FOR UPDATE OF q SKIP LOCKED
), cancelled AS (
    UPDATE send_queue q
    SET status = 'cancelled', failure_reason = 'sequence stopped: ' || s.stopped_reason,
        last_error = 'not sent: sequence stopped: ' || s.stopped_reason, updated_at = now()
    FROM stale s
    WHERE q.id = s.id AND q.status = 'pending'
    RETURNING q.id, s.stopped_reason
), decided AS (
    INSERT INTO queue_decisions (queue_id, from_status, to_status, decided_by, reason)
    SELECT id, 'pending', 'cancelled', 'sweeper', 'sequence stopped: ' || stopped_reason FROM cancelled
)
SELECT count(*) AS cancelled FROM cancelled
"""

# A row requeued by an operator (redrive, resend) in a campaign that had completed meanwhile:
# the campaign runs again, or the claim would never serve the row.
REOPEN_CAMPAIGN_OF_ROW: LiteralString = """
WITH reopened AS (
    UPDATE campaigns cp SET status = 'active', updated_at = now()
    FROM send_queue q
    WHERE q.id = %(queue_id)s AND cp.id = q.campaign_id AND cp.status = 'completed'
    RETURNING cp.id
)
INSERT INTO campaign_decisions (campaign_id, action, from_status, to_status, decided_by, reason)
SELECT id, 'reopen', 'completed', 'active', %(decided_by)s, 'a row was requeued' FROM reopened
"""

# --- sequences: stops --------------------------------------------------------------------------

# First statement of a stop: the contact's running sequences, in the campaigns concerned,
# locked in key order (every stop and cancel locks in this order, so they never deadlock),
# and marked stopped. Each input row is (address, event name or NULL, reason); an event name
# only stops campaigns that list it in stop_on_events.
STOP_SEQUENCES: LiteralString = """
WITH target AS (
    SELECT cc.campaign_id, cc.contact_id, m.reason
    FROM campaign_contacts cc
    JOIN contacts c ON c.id = cc.contact_id
    JOIN campaigns cp ON cp.id = cc.campaign_id
    CROSS JOIN LATERAL (
        SELECT t.reason
        FROM unnest(%(addresses)s::text[], %(event_names)s::text[], %(reasons)s::text[])
             AS t(address, event_name, reason)
        WHERE t.address = c.address AND (t.event_name IS NULL OR t.event_name = ANY(cp.stop_on_events))
        LIMIT 1
    ) AS m
    WHERE c.channel = %(channel)s::channel AND c.address = ANY(%(addresses)s::text[])
      AND cc.sequence_state IN ('waiting', 'active', 'halted', 'completed')
      AND (%(campaign_id)s::uuid IS NULL OR cc.campaign_id = %(campaign_id)s::uuid)
    ORDER BY cc.campaign_id, cc.contact_id
    FOR UPDATE OF cc
)
UPDATE campaign_contacts cc
SET sequence_state = 'stopped', stop_cause = %(cause)s, stopped_reason = t.reason, stopped_at = now()
FROM target t
WHERE cc.campaign_id = t.campaign_id AND cc.contact_id = t.contact_id
  AND cc.sequence_state IN ('waiting', 'active', 'halted', 'completed')
RETURNING cc.campaign_id, cc.contact_id
"""

# Second statement of a stop, with a fresh snapshot: the stopped sequences' pending rows,
# including a step a settle queued just before the stop took its lock.
CANCEL_STOPPED_ROWS: LiteralString = """
WITH stopped AS (
    SELECT * FROM unnest(%(campaign_ids)s::uuid[], %(contact_ids)s::uuid[]) AS s(campaign_id, contact_id)
), cancelled AS (
    UPDATE send_queue q
    SET status = 'cancelled', failure_reason = 'sequence stopped: ' || cc.stopped_reason,
        last_error = 'not sent: sequence stopped: ' || cc.stopped_reason, updated_at = now()
    FROM stopped s
    JOIN campaign_contacts cc ON cc.campaign_id = s.campaign_id AND cc.contact_id = s.contact_id
    WHERE q.campaign_id = s.campaign_id AND q.contact_id = s.contact_id AND q.status = 'pending'
    RETURNING q.id, cc.stopped_reason
), decided AS (
    INSERT INTO queue_decisions (queue_id, from_status, to_status, decided_by, reason)
    SELECT id, 'pending', 'cancelled', %(decided_by)s, 'sequence stopped: ' || stopped_reason FROM cancelled
)
SELECT count(*) AS cancelled FROM cancelled
"""

# --- campaign status ---------------------------------------------------------------------------

# Every figure of a status read from one snapshot.
READ_ONLY_SNAPSHOT: LiteralString = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"

CAMPAIGN_STEP_STATS: LiteralString = """
SELECT st.position, st.message_type, st.delay_seconds,
       count(q.id) FILTER (WHERE q.status IN ('pending', 'claimed', 'sending')) AS queued,
       count(q.id) FILTER (WHERE q.status = 'sent') AS sent,
       count(q.id) FILTER (WHERE q.status = 'failed') AS failed,
       count(q.id) FILTER (WHERE q.status = 'unknown') AS unknown,
       count(q.id) FILTER (WHERE q.status = 'cancelled') AS cancelled
FROM campaign_steps st
LEFT JOIN send_queue q ON q.campaign_id = st.campaign_id AND q.message_type = st.message_type
WHERE st.campaign_id = %(campaign_id)s
GROUP BY st.position, st.message_type, st.delay_seconds
ORDER BY st.position
"""

# A reply counts for the last step the contact had been sent when it replied.
CAMPAIGN_REPLIES_BY_STEP: LiteralString = """
SELECT last.position, count(*) AS replied
FROM campaign_contacts cc
CROSS JOIN LATERAL (
    SELECT max(st.position) AS position
    FROM send_queue q
    JOIN campaign_steps st ON st.campaign_id = q.campaign_id AND st.message_type = q.message_type
    WHERE q.campaign_id = cc.campaign_id AND q.contact_id = cc.contact_id AND q.status = 'sent'
      AND q.sent_at <= cc.stopped_at
) AS last
WHERE cc.campaign_id = %(campaign_id)s AND cc.stop_cause = 'reply'
GROUP BY last.position
"""

CAMPAIGN_SENDER_STATS: LiteralString = """
SELECT s.id, s.channel::text AS channel, s.provider_account_id, s.status, s.paused_until, s.pause_reason,
       (SELECT count(*) FROM campaign_contacts cc
        WHERE cc.campaign_id = cs.campaign_id AND cc.sender_account_id = s.id) AS contacts,
       count(q.id) FILTER (WHERE q.status IN ('pending', 'claimed', 'sending')) AS queued,
       count(q.id) FILTER (WHERE q.status = 'sent') AS sent,
       count(q.id) FILTER (WHERE q.status = 'failed') AS failed,
       count(q.id) FILTER (WHERE q.status = 'unknown') AS unknown,
       count(q.id) FILTER (WHERE q.status = 'cancelled') AS cancelled
FROM campaign_senders cs
JOIN sender_accounts s ON s.id = cs.sender_account_id
LEFT JOIN send_queue q ON q.campaign_id = cs.campaign_id AND q.sender_account_id = s.id
WHERE cs.campaign_id = %(campaign_id)s
GROUP BY s.id, cs.campaign_id
ORDER BY s.provider_account_id
"""

CAMPAIGN_CONTACT_STATES: LiteralString = """
SELECT sequence_state, COALESCE(stop_cause, '') AS stop_cause, count(*) AS contacts
FROM campaign_contacts WHERE campaign_id = %(campaign_id)s
GROUP BY sequence_state, stop_cause
ORDER BY sequence_state, stop_cause
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
# Single flight by a lease row, not a session advisory lock (see migration 0006): taken only
# if nobody holds it or the holder's lease ran out; returns a row only when taken.
ACQUIRE_LEASE: LiteralString = """
INSERT INTO single_flight_leases AS lease (name, holder, acquired_at, expires_at)
VALUES (%(name)s, %(holder)s, now(), now() + make_interval(secs => %(seconds)s))
ON CONFLICT (name) DO UPDATE
SET holder = EXCLUDED.holder, acquired_at = EXCLUDED.acquired_at, expires_at = EXCLUDED.expires_at
WHERE lease.expires_at <= now()
RETURNING holder
"""
# Only the holder releases, so a holder that outlived its lease cannot free its successor's.
RELEASE_LEASE: LiteralString = (
    "DELETE FROM single_flight_leases WHERE name = %(name)s AND holder = %(holder)s"
)

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

# The sweeper's per-channel gauges (dashboard and alarms). Due rows of active campaigns only:
# a campaign an operator paused is waiting on purpose. A due row waits, and ages, while its
# sender is paused, which is what the backlog-age alarm is for. One partial-index range read
# (send_queue_due) per run, every two minutes.
QUEUE_HEALTH_BY_CHANNEL: LiteralString = """
SELECT ch.channel::text AS channel,
       COALESCE(due.rows, 0) AS due_pending,
       COALESCE(EXTRACT(EPOCH FROM now() - due.oldest), 0)::double precision AS oldest_due_seconds,
       (SELECT count(*) FROM sender_accounts s
        WHERE s.channel = ch.channel
          AND (s.status <> 'active' OR s.paused_until > now())) AS paused_senders,
       (SELECT count(*) FROM sender_accounts s
        WHERE s.channel = ch.channel AND s.paused_by = 'provider' AND s.paused_until > now()) AS provider_paused_senders
FROM unnest(enum_range(NULL::channel)) AS ch(channel)
LEFT JOIN (
    SELECT c.channel, count(*) AS rows, min(q.scheduled_for) AS oldest
    FROM send_queue q
    JOIN contacts c ON c.id = q.contact_id
    JOIN campaigns cp ON cp.id = q.campaign_id AND cp.status = 'active'
    WHERE q.status = 'pending' AND q.scheduled_for <= now()
    GROUP BY c.channel
) AS due ON due.channel = ch.channel
ORDER BY ch.channel
"""

DEAD_LETTER_BATCH: LiteralString = """
SELECT q.id AS queue_id, q.idempotency_key, q.campaign_id, c.channel::text AS channel, q.contact_id,
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

# --- reconciliation, operators, statistics --------------------------------------------------

UNKNOWN_BATCH: LiteralString = """
SELECT q.id AS queue_id, q.idempotency_key, q.claim_token, q.attempts, q.max_attempts, q.message_type, q.body,
       q.updated_at AS unknown_since, q.sending_started_at, c.channel, c.address AS recipient,
       s.id AS sender_account_id, s.provider_account_id AS sender_provider_id
FROM send_queue q
JOIN contacts c ON c.id = q.contact_id
JOIN sender_accounts s ON s.id = q.sender_account_id
WHERE q.status = 'unknown'
ORDER BY q.reconciled_at NULLS FIRST, q.updated_at
LIMIT %(limit)s
"""

MARK_RECONCILED: LiteralString = """
UPDATE send_queue SET reconciled_at = now() WHERE id = %(queue_id)s AND status = 'unknown'
"""

# Evidence that a message reached the provider: a webhook event carrying its idempotency key
# (WhatsApp biz_opaque_callback_data, Messenger metadata) with a provider message id.
EVIDENCE_BY_KEY: LiteralString = """
SELECT provider_message_id, provider_thread_id, status, event_type, occurred_at
FROM provider_events
WHERE channel = %(channel)s AND idempotency_key = %(idempotency_key)s AND provider_message_id IS NOT NULL
ORDER BY received_at
LIMIT 1
"""

# Unipile has no correlation field: a message our account sent to the recipient with the
# same text, after the row started sending, is the evidence.
EVIDENCE_BY_TEXT: LiteralString = """
SELECT e.provider_message_id, e.provider_thread_id, e.status, e.event_type, e.occurred_at
FROM provider_events e
WHERE e.channel = %(channel)s AND e.status = 'sent' AND e.recipient = %(recipient)s
  AND e.payload->>'text' = %(body)s
  AND e.provider_message_id IS NOT NULL
  -- Only a message sent after this row started sending (minus reconcile.EVIDENCE_CLOCK_SKEW)
  -- can be it.
  AND COALESCE(e.occurred_at, e.received_at)
      >= %(sending_started_at)s - make_interval(secs => %(clock_skew_seconds)s)
  AND NOT EXISTS (SELECT 1 FROM message_ledger l
                  WHERE l.channel = e.channel AND l.provider_message_id = e.provider_message_id)
ORDER BY e.received_at
LIMIT 1
"""

KNOWN_THREAD: LiteralString = """
SELECT l.provider_thread_id FROM message_ledger l
JOIN send_queue q ON q.id = l.queue_id
WHERE l.channel = %(channel)s AND l.recipient = %(recipient)s AND q.sender_account_id = %(sender_account_id)s
  AND l.provider_thread_id IS NOT NULL
ORDER BY l.sent_at DESC
LIMIT 1
"""

# Which of a read-back's candidate messages the ledger already credits to another row: they
# are that row's evidence, not this one's.
LEDGER_CLAIMS_OF_OTHER_ROWS: LiteralString = """
SELECT provider_message_id, queue_id FROM message_ledger
WHERE channel = %(channel)s AND provider_message_id = ANY(%(provider_message_ids)s::text[])
  AND queue_id <> %(queue_id)s
"""

# An `unknown` row held for a stated reason: last_error says why, and the decision is recorded
# the first time only (a repeat finds last_error already equal and changes nothing).
# updated_at is left alone: it is when the row became unknown, which the grace period counts from.
HOLD_UNKNOWN: LiteralString = """
WITH held AS (
    UPDATE send_queue SET last_error = %(reason)s
    WHERE id = %(queue_id)s AND status = 'unknown' AND last_error IS DISTINCT FROM %(reason)s
    RETURNING id
)
INSERT INTO queue_decisions (queue_id, from_status, to_status, decided_by, reason, evidence)
SELECT id, 'unknown', 'unknown', %(decided_by)s, %(reason)s, %(evidence)s::jsonb FROM held
"""

# --- evidence of absence (shared/absence.py) ----------------------------------------------------

# Anything a provider said about this message, or, unexplained, about its recipient since the
# attempt: a webhook carrying its key, or a status for the person whose provider id no ledger
# row explains (Messenger deliveries and reads carry no metadata, Unipile no key at all).
# Replies are not about our message and do not count. The contact column is the person for
# every status shape (shared.webhooks), and is indexed with the channel.
ABSENCE_EVENTS_FOR_MESSAGE: LiteralString = """
SELECT
  (SELECT count(*) FROM provider_events e
   WHERE e.channel = %(channel)s AND e.idempotency_key = %(idempotency_key)s) AS by_key,
  (SELECT count(*) FROM provider_events e
   WHERE e.channel = %(channel)s AND e.contact = %(recipient)s
     AND e.status IS DISTINCT FROM 'received'
     AND e.received_at >= %(started)s - make_interval(secs => %(clock_skew_seconds)s)
     AND (e.provider_message_id IS NULL
          OR NOT EXISTS (SELECT 1 FROM message_ledger l
                         WHERE l.channel = e.channel AND l.provider_message_id = e.provider_message_id)))
  AS unexplained_for_recipient
"""

# Is the webhook pipe alive for this sender around the attempt? The sender's other messages
# accepted within +-T of it, and how many of those had a status webhook arrive; and when the
# last status for any message of the sender arrived (the "silent since" of `sendonce unknown`).
ABSENCE_PIPE: LiteralString = """
WITH around AS (
    SELECT l.channel, l.provider_message_id
    FROM message_ledger l
    JOIN send_queue q ON q.id = l.queue_id
    WHERE l.channel = %(channel)s
      AND l.sent_at BETWEEN %(started)s - make_interval(secs => %(window_seconds)s)
                        AND %(started)s + make_interval(secs => %(window_seconds)s)
      AND q.sender_account_id = %(sender_account_id)s AND q.id <> %(queue_id)s
)
SELECT
  (SELECT count(*) FROM around) AS sent_in_window,
  (SELECT count(*) FROM around a WHERE EXISTS (
       SELECT 1 FROM provider_events e
       WHERE e.channel = a.channel AND e.provider_message_id = a.provider_message_id
         AND e.status IN ('sent', 'delivered', 'read', 'failed'))) AS heard_in_window,
  (SELECT max(e.received_at)
   FROM message_ledger l
   JOIN send_queue q ON q.id = l.queue_id
   JOIN provider_events e ON e.channel = l.channel AND e.provider_message_id = l.provider_message_id
   WHERE l.channel = %(channel)s AND q.sender_account_id = %(sender_account_id)s
     AND l.sent_at > now() - interval '7 days'
     AND e.status IN ('sent', 'delivered', 'read', 'failed')) AS sender_last_event_at
"""

SAVE_ABSENCE_CHECK: LiteralString = """
UPDATE send_queue SET absence_check = %(check)s::jsonb, absence_checked_at = now()
WHERE id = %(queue_id)s AND status = 'unknown'
"""

HELD_UNKNOWN_ROWS: LiteralString = """
SELECT q.id AS queue_id, cp.name AS campaign, c.channel::text AS channel, q.attempts, q.max_attempts,
       q.sending_started_at, q.updated_at AS unknown_since, q.last_error, q.absence_check,
       q.absence_checked_at
FROM send_queue q
JOIN contacts c ON c.id = q.contact_id
JOIN campaigns cp ON cp.id = q.campaign_id
WHERE q.status = 'unknown'
  AND (%(campaign_id)s::uuid IS NULL OR q.campaign_id = %(campaign_id)s::uuid)
ORDER BY q.updated_at, q.id
LIMIT %(limit)s
"""

QUEUE_ROW_FOR_DECISION: LiteralString = """
SELECT q.id AS queue_id, q.idempotency_key, q.claim_token, q.attempts, q.max_attempts, q.message_type, q.body,
       q.status::text AS status, c.channel, c.address AS recipient, s.id AS sender_account_id,
       s.provider_account_id AS sender_provider_id,
       EXISTS (SELECT 1 FROM message_ledger l WHERE l.queue_id = q.id) AS has_ledger_row,
       -- An ambiguous call, or a past `unknown`, means it may have been delivered.
       (EXISTS (SELECT 1 FROM send_attempts a WHERE a.queue_id = q.id AND a.outcome IN ('sent', 'ambiguous'))
        OR EXISTS (SELECT 1 FROM queue_decisions d WHERE d.queue_id = q.id AND d.from_status = 'unknown'))
           AS maybe_delivered,
       cp.status AS campaign_status, cc.sequence_state, cc.stopped_reason
FROM send_queue q
JOIN contacts c ON c.id = q.contact_id
JOIN sender_accounts s ON s.id = q.sender_account_id
JOIN campaigns cp ON cp.id = q.campaign_id
LEFT JOIN campaign_contacts cc ON cc.campaign_id = q.campaign_id AND cc.contact_id = q.contact_id
WHERE q.id = %(queue_id)s
"""

# Holds the row while a decision forgets its idempotency record and requeues it, so nothing
# can claim or change it in between.
LOCK_FOR_DECISION: LiteralString = """
SELECT id, claimed_at, claimed_at + make_interval(secs => %(lease_seconds)s) AS lease_ends_at,
       claimed_at IS NULL OR claimed_at + make_interval(secs => %(lease_seconds)s) < now() AS lease_over
FROM send_queue
WHERE id = %(queue_id)s AND status = %(expected_status)s::queue_status
  AND claim_token IS NOT DISTINCT FROM %(claim_token)s
FOR UPDATE
"""

# Redrive and operator resends, CAS on status and token. A redriven failed row starts its
# attempts afresh; a resent unknown row keeps them, so max_attempts still bounds resends.
REQUEUE: LiteralString = """
UPDATE send_queue
SET status = 'pending', attempts = CASE WHEN %(reset_attempts)s THEN 0 ELSE attempts END,
    scheduled_for = now(), claim_token = NULL, lease_expires_at = NULL, reconciled_at = NULL,
    failure_reason = NULL, dead_lettered_at = NULL, last_error = %(last_error)s, updated_at = now()
WHERE id = %(queue_id)s AND status = %(expected_status)s::queue_status
  AND claim_token IS NOT DISTINCT FROM %(claim_token)s
RETURNING id
"""

FAILED_FOR_REDRIVE: LiteralString = """
SELECT q.id AS queue_id FROM send_queue q
WHERE q.status = 'failed'
  AND (%(campaign_id)s::uuid IS NULL OR q.campaign_id = %(campaign_id)s::uuid)
  AND (%(reason_like)s::text IS NULL OR q.failure_reason LIKE %(reason_like)s)
ORDER BY q.id
LIMIT %(limit)s
"""

# Statistics are counted from state every time: there is no counter to drift (seed 002).
CAMPAIGN_STATS: LiteralString = """
SELECT cp.id AS campaign_id, cp.name,
       count(q.id) AS total,
       count(q.id) FILTER (WHERE q.status = 'pending') AS pending,
       count(q.id) FILTER (WHERE q.status IN ('claimed', 'sending')) AS in_flight,
       count(q.id) FILTER (WHERE q.status = 'sent') AS sent,
       count(l.id) FILTER (WHERE l.delivery_status IN ('delivered', 'read')) AS delivered,
       count(l.id) FILTER (WHERE l.delivery_status = 'read') AS read,
       count(q.id) FILTER (WHERE q.status = 'failed') AS failed,
       count(q.id) FILTER (WHERE q.status = 'unknown') AS unknown,
       count(q.id) FILTER (WHERE q.status = 'cancelled') AS cancelled
FROM campaigns cp
LEFT JOIN send_queue q ON q.campaign_id = cp.id
LEFT JOIN message_ledger l ON l.queue_id = q.id
WHERE %(campaign_id)s::uuid IS NULL OR cp.id = %(campaign_id)s::uuid
GROUP BY cp.id, cp.name
ORDER BY cp.created_at
"""

AUDIT_QUEUE: LiteralString = """
SELECT q.id AS queue_id, q.campaign_id, cp.name AS campaign, c.channel::text AS channel, c.address AS recipient,
       q.message_type, q.body, q.status::text AS status, q.attempts, q.idempotency_key, q.provider_message_id,
       q.created_at, q.claimed_at, q.sending_started_at, q.sent_at, q.failure_reason, q.last_error
FROM send_queue q
JOIN contacts c ON c.id = q.contact_id
JOIN campaigns cp ON cp.id = q.campaign_id
WHERE (%(campaign_id)s::uuid IS NULL OR q.campaign_id = %(campaign_id)s::uuid)
  AND (%(address)s::text IS NULL OR c.address = %(address)s)
ORDER BY q.id
"""

AUDIT_LEDGER: LiteralString = """
SELECT l.* FROM message_ledger l WHERE l.queue_id = ANY(%(queue_ids)s::bigint[]) ORDER BY l.sent_at
"""

AUDIT_ATTEMPTS: LiteralString = """
SELECT a.* FROM send_attempts a WHERE a.queue_id = ANY(%(queue_ids)s::bigint[]) ORDER BY a.recorded_at
"""

AUDIT_DECISIONS: LiteralString = """
SELECT d.* FROM queue_decisions d WHERE d.queue_id = ANY(%(queue_ids)s::bigint[]) ORDER BY d.decided_at
"""

AUDIT_EVENTS: LiteralString = """
SELECT e.id, e.channel::text AS channel, e.event_type, e.status, e.provider_message_id, e.idempotency_key,
       e.recipient, e.occurred_at, e.received_at
FROM provider_events e
WHERE e.idempotency_key = ANY(%(keys)s::text[]) OR e.provider_message_id = ANY(%(message_ids)s::text[])
   OR (%(address)s::text IS NOT NULL AND (e.recipient = %(address)s OR e.contact = %(address)s))
ORDER BY e.received_at
"""

# Suspected duplicates: one idempotency key seen with two provider message ids in webhooks, or
# one recipient given the same text twice within an hour (across campaigns, as in seed 000).
DUPLICATES_BY_KEY: LiteralString = """
SELECT channel::text AS channel, idempotency_key, count(DISTINCT provider_message_id) AS copies
FROM provider_events
WHERE idempotency_key IS NOT NULL AND provider_message_id IS NOT NULL
  AND received_at > now() - make_interval(secs => %(lookback_seconds)s)
GROUP BY channel, idempotency_key
HAVING count(DISTINCT provider_message_id) > 1
"""

# A webhook for a key whose row is not `sent` by that provider id: the provider accepted a
# message we hold as pending, claimed, failed or cancelled (a resend was decided while the
# first copy was accepted), or a sent row whose ledger names another provider id. `sending`
# and `unknown` rows are left out: a status may rightly arrive before the settle, and the
# reconciler settles an unknown row from it; once sent, a second id shows here.
DUPLICATES_KEY_ON_UNSENT_ROW: LiteralString = """
SELECT e.channel::text AS channel, e.idempotency_key, q.id AS queue_id, q.status::text AS row_status,
       count(DISTINCT e.provider_message_id) AS provider_ids
FROM provider_events e
JOIN send_queue q ON q.idempotency_key = e.idempotency_key
LEFT JOIN message_ledger l ON l.queue_id = q.id
WHERE e.idempotency_key IS NOT NULL AND e.provider_message_id IS NOT NULL
  AND e.received_at > now() - make_interval(secs => %(lookback_seconds)s)
  AND (q.status IN ('pending', 'claimed', 'failed', 'cancelled')
       OR (q.status = 'sent' AND l.recovered_from <> 'operator'
           AND l.provider_message_id IS DISTINCT FROM e.provider_message_id))
GROUP BY e.channel, e.idempotency_key, q.id, q.status
"""

DUPLICATES_BY_TEXT: LiteralString = """
SELECT l1.channel::text AS channel, l1.recipient, count(*) AS pairs,
       array_agg(DISTINCT l1.queue_id) || array_agg(DISTINCT l2.queue_id) AS queue_ids
FROM message_ledger l1
JOIN send_queue q1 ON q1.id = l1.queue_id
JOIN message_ledger l2 ON l2.channel = l1.channel AND l2.recipient = l1.recipient AND l2.id > l1.id
JOIN send_queue q2 ON q2.id = l2.queue_id
WHERE q2.body = q1.body
  AND l2.sent_at >= l1.sent_at AND l2.sent_at - l1.sent_at < interval '1 hour'
  AND l1.sent_at > now() - make_interval(secs => %(lookback_seconds)s) - interval '1 hour'
GROUP BY l1.channel, l1.recipient
"""

# --- webhooks ------------------------------------------------------------------------------

# One statement stores every row of a delivery. A retried or replayed delivery conflicts on
# (channel, dedupe_key) and changes nothing; RETURNING names only the rows actually stored.
INSERT_PROVIDER_EVENTS: LiteralString = """
INSERT INTO provider_events (channel, event_type, dedupe_key, idempotency_key, provider_message_id,
                             provider_thread_id, recipient, contact, status, occurred_at, payload)
SELECT %(channel)s::channel, e.event_type, e.dedupe_key, e.idempotency_key, e.provider_message_id,
       e.provider_thread_id, e.recipient, e.contact, e.status, e.occurred_at, e.payload
FROM unnest(%(event_types)s::text[], %(dedupe_keys)s::text[], %(idempotency_keys)s::text[],
            %(provider_message_ids)s::text[], %(provider_thread_ids)s::text[], %(recipients)s::text[],
            %(contacts)s::text[], %(statuses)s::text[], %(occurred_ats)s::timestamptz[], %(payloads)s::jsonb[])
     AS e(event_type, dedupe_key, idempotency_key, provider_message_id, provider_thread_id, recipient,
          contact, status, occurred_at, payload)
ON CONFLICT (channel, dedupe_key) DO NOTHING
RETURNING dedupe_key
"""

# Delivery status only moves forward: accepted < delivered < read. `failed` replaces only
# `accepted`; a later delivered/read is proof the message arrived and wins over `failed`.
# Webhooks arrive out of order and concurrently: the rank comparison sits in the WHERE clause,
# so a concurrent update is re-checked against the row it waited for and never regresses it.
# Several statuses for one message in one delivery are reduced to the highest first, because
# UPDATE ... FROM applies only one source row per target row.
APPLY_DELIVERY_STATUS: LiteralString = """
WITH incoming AS (
    SELECT DISTINCT ON (s.provider_message_id) s.provider_message_id, s.status, s.occurred_at
    FROM unnest(%(provider_message_ids)s::text[], %(statuses)s::text[], %(occurred_ats)s::timestamptz[])
         AS s(provider_message_id, status, occurred_at)
    WHERE s.status IN ('delivered', 'read', 'failed')
    ORDER BY s.provider_message_id, CASE s.status WHEN 'read' THEN 2 WHEN 'delivered' THEN 1 ELSE 0 END DESC
)
UPDATE message_ledger l
SET delivery_status = i.status, delivery_updated_at = COALESCE(i.occurred_at, now())
FROM incoming i
WHERE l.channel = %(channel)s::channel AND l.provider_message_id = i.provider_message_id
  AND CASE WHEN i.status = 'failed' THEN l.delivery_status = 'accepted'
           ELSE CASE l.delivery_status WHEN 'read' THEN 2 WHEN 'delivered' THEN 1 ELSE 0 END
              < CASE i.status WHEN 'read' THEN 2 ELSE 1 END
      END
RETURNING l.id
"""

# Messenger reads (and deliveries without mids) name no message, only a watermark: everything
# sent to that recipient at or before it. The ledger's sent_at is taken after the Send API
# answered, so it is later than Meta's own timestamp; the echo event (Meta's clock) catches
# messages whose sent_at landed just after the watermark.
APPLY_WATERMARK_STATUS: LiteralString = """
UPDATE message_ledger l
SET delivery_status = %(status)s::text, delivery_updated_at = COALESCE(%(occurred_at)s::timestamptz, now())
WHERE l.channel = %(channel)s::channel AND l.recipient = %(recipient)s::text
  AND CASE l.delivery_status WHEN 'read' THEN 2 WHEN 'delivered' THEN 1 ELSE 0 END
      < CASE %(status)s::text WHEN 'read' THEN 2 ELSE 1 END
  AND (l.sent_at <= %(watermark)s::timestamptz
       OR EXISTS (SELECT 1 FROM provider_events e
                  WHERE e.channel = l.channel AND e.provider_message_id = l.provider_message_id
                    AND e.event_type = 'message_echo' AND e.occurred_at <= %(watermark)s::timestamptz))
RETURNING l.id
"""

# A status webhook can beat its ledger row: the provider reports `delivered` before the
# dispatcher commits `sent`, or reconciliation settles an `unknown` row days after the
# webhooks arrived. This applies the best stored status to recent ledger rows that lag it,
# with the same ranking as APPLY_DELIVERY_STATUS.
BACKFILL_DELIVERY_STATUS: LiteralString = """
WITH best AS (
    SELECT DISTINCT ON (l.id) l.id, e.status, e.occurred_at
    FROM message_ledger l
    JOIN provider_events e ON e.channel = l.channel AND e.provider_message_id = l.provider_message_id
    WHERE l.sent_at > now() - make_interval(secs => %(lookback_seconds)s)
      AND l.delivery_status <> 'read'
      AND e.status IN ('delivered', 'read', 'failed')
    ORDER BY l.id, CASE e.status WHEN 'read' THEN 2 WHEN 'delivered' THEN 1 ELSE 0 END DESC
)
UPDATE message_ledger l
SET delivery_status = b.status, delivery_updated_at = COALESCE(b.occurred_at, now())
FROM best b
WHERE l.id = b.id
  AND CASE WHEN b.status = 'failed' THEN l.delivery_status = 'accepted'
           ELSE CASE l.delivery_status WHEN 'read' THEN 2 WHEN 'delivered' THEN 1 ELSE 0 END
              < CASE b.status WHEN 'read' THEN 2 ELSE 1 END
      END
RETURNING l.id
"""


# --- channels: windows, WhatsApp templates, LinkedIn profiles ----------------------------------

# Inbound messages open the 24-hour window; a late, replayed webhook never moves it back. A
# contact who writes before any campaign names them is kept too: their window is open when a
# campaign reaches them. Sorted, so concurrent deliveries lock contacts in one order.
RECORD_INBOUND: LiteralString = """
INSERT INTO contacts (channel, address, last_inbound_at)
SELECT %(channel)s, address, max(at)
FROM unnest(%(addresses)s::text[], %(ats)s::timestamptz[]) AS i(address, at)
GROUP BY address
ORDER BY address
ON CONFLICT (channel, address) DO UPDATE
SET last_inbound_at = GREATEST(contacts.last_inbound_at, EXCLUDED.last_inbound_at)
WHERE contacts.last_inbound_at IS NULL OR contacts.last_inbound_at < EXCLUDED.last_inbound_at
"""

SET_SENDER_BUSINESS_ACCOUNT: LiteralString = """
UPDATE sender_accounts SET business_account_id = %(business_account_id)s
WHERE channel = 'whatsapp' AND provider_account_id = ANY(%(provider_account_ids)s::text[])
"""

# A sync replaces what the WABA had: a template deleted at Meta disappears here too.
DELETE_WHATSAPP_TEMPLATES: LiteralString = """
DELETE FROM whatsapp_templates WHERE business_account_id = %(business_account_id)s
"""

INSERT_WHATSAPP_TEMPLATES: LiteralString = """
INSERT INTO whatsapp_templates (business_account_id, name, language, status, category, template_id,
                                body_parameters, header_format, header_parameters, buttons, components)
SELECT %(business_account_id)s, t.name, t.language, t.status, t.category, t.template_id, t.body_parameters,
       t.header_format, t.header_parameters, t.buttons, t.components
FROM unnest(%(names)s::text[], %(languages)s::text[], %(statuses)s::text[], %(categories)s::text[],
            %(template_ids)s::text[], %(body_parameters)s::int[], %(header_formats)s::text[],
            %(header_parameters)s::int[], %(buttons)s::jsonb[], %(components)s::jsonb[])
     AS t(name, language, status, category, template_id, body_parameters, header_format, header_parameters,
          buttons, components)
ON CONFLICT (business_account_id, name, language) DO UPDATE
SET status = EXCLUDED.status, category = EXCLUDED.category, template_id = EXCLUDED.template_id,
    body_parameters = EXCLUDED.body_parameters, header_format = EXCLUDED.header_format,
    header_parameters = EXCLUDED.header_parameters, buttons = EXCLUDED.buttons,
    components = EXCLUDED.components, synced_at = now()
"""

# The sender's WABA: set on the sender by a sync, or, for a sender created since, named by the
# last sync of the WABA that lists its phone number.
WHATSAPP_TEMPLATE_FOR_SENDER: LiteralString = """
SELECT t.name, t.language, t.status, t.body_parameters, t.header_format, t.header_parameters, t.buttons,
       w.business_account_id
FROM sender_accounts s
CROSS JOIN LATERAL (
    SELECT COALESCE(s.business_account_id,
                    (SELECT y.business_account_id FROM whatsapp_template_syncs y
                     WHERE s.provider_account_id = ANY(y.phone_number_ids) AND y.synced_at IS NOT NULL
                     ORDER BY y.synced_at DESC LIMIT 1)) AS business_account_id
) AS w
LEFT JOIN whatsapp_templates t
  ON t.business_account_id = w.business_account_id AND t.name = %(name)s AND t.language = %(language)s
WHERE s.id = %(sender_account_id)s
"""

# The WABAs a sweep should sync now: never tried, last failed, or last synced over the interval ago.
TEMPLATE_SYNCS_DUE: LiteralString = """
SELECT a.id AS business_account_id
FROM unnest(%(business_account_ids)s::text[]) AS a(id)
LEFT JOIN whatsapp_template_syncs y ON y.business_account_id = a.id
WHERE y.business_account_id IS NULL OR y.last_error IS NOT NULL
   OR y.last_attempt_at <= now() - make_interval(secs => %(interval_seconds)s)
ORDER BY a.id
"""

RECORD_TEMPLATE_SYNC: LiteralString = """
INSERT INTO whatsapp_template_syncs (business_account_id, phone_number_ids, last_attempt_at, synced_at,
                                     templates, last_error)
VALUES (%(business_account_id)s, %(phone_number_ids)s, now(), now(), %(templates)s, NULL)
ON CONFLICT (business_account_id) DO UPDATE
SET phone_number_ids = EXCLUDED.phone_number_ids, last_attempt_at = now(), synced_at = now(),
    templates = EXCLUDED.templates, last_error = NULL
"""

# A failed sync keeps what was synced before (templates, synced_at) and says why.
RECORD_TEMPLATE_SYNC_FAILURE: LiteralString = """
INSERT INTO whatsapp_template_syncs (business_account_id, phone_number_ids, last_attempt_at, last_error)
VALUES (%(business_account_id)s, %(phone_number_ids)s, now(), %(error)s)
ON CONFLICT (business_account_id) DO UPDATE
SET phone_number_ids = EXCLUDED.phone_number_ids, last_attempt_at = now(), last_error = EXCLUDED.last_error
"""

TEMPLATE_SYNC_STATUS: LiteralString = """
SELECT y.business_account_id, y.phone_number_ids, y.last_attempt_at, y.synced_at, y.templates, y.last_error,
       (SELECT count(*) FROM whatsapp_templates t
        WHERE t.business_account_id = y.business_account_id AND t.status = 'APPROVED') AS approved
FROM whatsapp_template_syncs y
ORDER BY y.business_account_id
"""

WHATSAPP_TEMPLATES_LIST: LiteralString = """
SELECT business_account_id, name, language, status, category, body_parameters, header_format, synced_at
FROM whatsapp_templates
WHERE %(business_account_id)s::text IS NULL OR business_account_id = %(business_account_id)s::text
ORDER BY business_account_id, name, language
"""

CONTACT_PROFILE: LiteralString = """
SELECT provider_profile_id FROM contacts WHERE id = %(contact_id)s
"""

SET_CONTACT_PROFILE: LiteralString = """
UPDATE contacts SET provider_profile_id = %(provider_profile_id)s, provider_profile_checked_at = now()
WHERE channel = %(channel)s AND address = %(address)s
"""

# A provider event a step waits for (LinkedIn: new_relation, the invitation accepted): queue
# that step for every active sequence of this contact, on the sender the event is about, whose
# previous step was sent. Due delay_seconds after the event, moved into the sender's window.
# Runs in the webhook's transaction, only for newly stored events; ON CONFLICT makes a second
# delivery of the event harmless either way.
QUEUE_AFTER_EVENT: LiteralString = """
INSERT INTO send_queue (campaign_id, contact_id, sender_account_id, message_type, body, content, action,
                        scheduled_for, max_attempts)
SELECT cc.campaign_id, cc.contact_id, cc.sender_account_id, nxt.message_type,
       COALESCE(cc.rendered_bodies[nxt.position], nxt.body), nxt.content, nxt.action,
       CASE WHEN sa.window_start IS NULL AND sa.window_days IS NULL
            THEN GREATEST(%(occurred_at)s::timestamptz + make_interval(secs => nxt.delay_seconds), nxt.send_at)
            ELSE sendonce_next_window_open(GREATEST(%(occurred_at)s::timestamptz + make_interval(secs => nxt.delay_seconds),
                                                    nxt.send_at),
                                           sa.timezone, sa.window_days, sa.window_start, sa.window_end)
       END,
       prev.max_attempts
FROM contacts c
JOIN campaign_contacts cc ON cc.contact_id = c.id AND cc.sequence_state = 'active'
JOIN campaigns cp ON cp.id = cc.campaign_id AND cp.status IN ('active', 'paused')
JOIN sender_accounts sa ON sa.id = cc.sender_account_id
JOIN send_queue prev ON prev.campaign_id = cc.campaign_id AND prev.contact_id = cc.contact_id AND prev.status = 'sent'
JOIN campaign_steps cur ON cur.campaign_id = prev.campaign_id AND cur.message_type = prev.message_type
JOIN campaign_steps nxt ON nxt.campaign_id = cur.campaign_id AND nxt.position = cur.position + 1
WHERE c.channel = %(channel)s
  AND (c.address = ANY(%(contacts)s::text[]) OR c.provider_profile_id = ANY(%(contacts)s::text[]))
  AND (%(sender_provider_id)s::text IS NULL OR sa.provider_account_id = %(sender_provider_id)s)
  AND nxt.after_event = %(event_name)s
ON CONFLICT (campaign_id, contact_id, message_type) DO NOTHING
RETURNING id
"""
# --- contact fields, personalised bodies, send_at (issue 8) ----------------------------------------

# What a template can read of contacts that already exist: the request's own fields are merged
# over these before rendering; and when each last wrote (the 24-hour windows, shared.windows).
CONTACT_PROFILES: LiteralString = """
SELECT address, display_name, fields, last_inbound_at FROM contacts
WHERE channel = %(channel)s::channel AND address = ANY(%(addresses)s::text[])
"""

# What the enqueue-time window check (shared.windows) reads of a stored campaign: each step's
# content and timing, and the campaign's send_at (QUEUE_FIRST_STEP applies it to step 1).
WINDOW_STEPS: LiteralString = """
SELECT st.position, st.message_type, st.content, st.delay_seconds, st.send_at, st.after_event,
       cp.send_at AS campaign_send_at
FROM campaign_steps st JOIN campaigns cp ON cp.id = st.campaign_id
WHERE st.campaign_id = %(campaign_id)s
ORDER BY st.position
"""

# Only rows whose fields, URL or empty display name change are locked and written, in address
# order like every other contact lock (so two writers never wait on each other in a cycle):
# importing the same file twice writes nothing the second time.
MERGE_CONTACT_FIELDS: LiteralString = """
WITH t AS MATERIALIZED (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb)
        AS r(address text, display_name text, fields jsonb, linkedin_profile_url text)
), changed AS (
    SELECT c.id, t.fields, t.linkedin_profile_url, t.display_name
    FROM contacts c JOIN t ON c.channel = %(channel)s::channel AND c.address = t.address
    WHERE NOT c.fields @> t.fields
       OR (t.linkedin_profile_url IS NOT NULL AND t.linkedin_profile_url IS DISTINCT FROM c.linkedin_profile_url)
       OR (c.display_name = '' AND t.display_name <> '')
    ORDER BY c.address
    FOR NO KEY UPDATE OF c
)
UPDATE contacts c
SET fields = c.fields || ch.fields,
    linkedin_profile_url = COALESCE(ch.linkedin_profile_url, c.linkedin_profile_url),
    display_name = CASE WHEN c.display_name = '' THEN ch.display_name ELSE c.display_name END
FROM changed ch
WHERE c.id = ch.id
"""

# Members of this campaign among these addresses: they keep the text rendered when they joined.
EXISTING_MEMBERS: LiteralString = """
SELECT c.address FROM campaign_contacts cc JOIN contacts c ON c.id = cc.contact_id
WHERE cc.campaign_id = %(campaign_id)s AND c.channel = %(channel)s::channel
  AND c.address = ANY(%(addresses)s::text[])
"""

SET_CAMPAIGN_SEND_AT: LiteralString = """
UPDATE campaigns SET send_at = %(send_at)s, send_at_timezone = %(send_at_timezone)s
WHERE id = %(campaign_id)s
"""

# --- suppression (issue 8) -----------------------------------------------------------------------

# Addresses among these that an active suppression covers for any of these senders (or all).
SUPPRESSED_AMONG: LiteralString = """
SELECT DISTINCT s.address FROM suppressions s
WHERE s.channel = %(channel)s::channel AND s.address = ANY(%(addresses)s::text[]) AND s.removed_at IS NULL
  AND (s.sender_account_id IS NULL OR s.sender_account_id = ANY(%(sender_ids)s::uuid[]))
"""

ADD_SUPPRESSIONS: LiteralString = """
INSERT INTO suppressions (channel, address, sender_account_id, source, reason, created_by)
SELECT %(channel)s::channel, t.address, %(sender_account_id)s::uuid, %(source)s, t.reason, %(created_by)s
FROM unnest(%(addresses)s::text[], %(reasons)s::text[]) AS t(address, reason)
ON CONFLICT (channel, address, COALESCE(sender_account_id, '00000000-0000-0000-0000-000000000000'::uuid))
    WHERE removed_at IS NULL DO NOTHING
RETURNING id, address
"""

REMOVE_SUPPRESSION: LiteralString = """
UPDATE suppressions
SET removed_at = now(), removed_by = %(removed_by)s, removed_reason = %(reason)s
WHERE channel = %(channel)s::channel AND address = %(address)s AND removed_at IS NULL
  AND sender_account_id IS NOT DISTINCT FROM %(sender_account_id)s::uuid
RETURNING id
"""

LIST_SUPPRESSIONS: LiteralString = """
SELECT s.id, s.channel::text AS channel, s.address, sa.provider_account_id AS sender, s.source, s.reason,
       s.created_by, s.created_at, s.removed_at, s.removed_by, s.removed_reason
FROM suppressions s LEFT JOIN sender_accounts sa ON sa.id = s.sender_account_id
WHERE (%(channel)s::channel IS NULL OR s.channel = %(channel)s::channel)
  AND (%(address)s::text IS NULL OR s.address = %(address)s)
  AND (%(include_removed)s OR s.removed_at IS NULL)
ORDER BY s.created_at, s.id
LIMIT %(limit)s
"""

# A sender-scoped suppression stops the contact only in the campaigns where that sender serves it.
CAMPAIGNS_OF_CONTACT_SENDER: LiteralString = """
SELECT cc.campaign_id FROM campaign_contacts cc JOIN contacts c ON c.id = cc.contact_id
WHERE c.channel = %(channel)s::channel AND c.address = %(address)s
  AND cc.sender_account_id = %(sender_account_id)s
"""

# Every suppression, active or lifted, of a contact or of a campaign's contacts (sendonce audit).
AUDIT_SUPPRESSIONS: LiteralString = """
SELECT s.id, s.channel::text AS channel, s.address, sa.provider_account_id AS sender, s.source, s.reason,
       s.created_by, s.created_at, s.removed_at, s.removed_by, s.removed_reason
FROM suppressions s LEFT JOIN sender_accounts sa ON sa.id = s.sender_account_id
WHERE (%(address)s::text IS NULL OR s.address = %(address)s)
  AND (%(campaign_id)s::uuid IS NULL OR EXISTS (
        SELECT 1 FROM campaign_contacts cc JOIN contacts c ON c.id = cc.contact_id
        WHERE cc.campaign_id = %(campaign_id)s::uuid AND c.channel = s.channel AND c.address = s.address))
ORDER BY s.created_at, s.id
"""

# The benchmark's baseline (devstack/bench/naive.py), never run by a function: the unsafe
# sender the dispatcher is measured against. One row locked for the length of its provider
# call, no lease, no idempotency record, no pacing, no attempt history.
NAIVE_LOCK_NEXT: LiteralString = """
SELECT q.id AS queue_id, q.idempotency_key, q.message_type, q.body, c.channel, c.address AS recipient,
       s.id AS sender_account_id, s.provider_account_id AS sender_provider_id
FROM send_queue q
JOIN contacts c ON c.id = q.contact_id
JOIN sender_accounts s ON s.id = q.sender_account_id
WHERE q.status = 'pending'
ORDER BY q.id
LIMIT 1
FOR UPDATE OF q SKIP LOCKED
"""

NAIVE_MARK_SENT: LiteralString = """
UPDATE send_queue
SET status = 'sent', provider_message_id = %(provider_message_id)s, sent_at = now(), updated_at = now()
WHERE id = %(queue_id)s
"""

NAIVE_MARK_FAILED: LiteralString = """
UPDATE send_queue SET status = 'failed', last_error = %(reason)s, updated_at = now() WHERE id = %(queue_id)s
"""

# The benchmark's steady-state rate: the first and the last send of a run.
BENCH_SENT_SPAN: LiteralString = """
SELECT count(*) AS sent, min(sent_at) AS first_sent, max(sent_at) AS last_sent
FROM send_queue WHERE status = 'sent'
"""

# The claim-scale benchmark (devstack/bench/claim_scale.py): a day's sends settled at once, the
# oldest due rows first, as the dispatchers would have left them; then the table's sizes.
BENCH_SETTLE_OLDEST: LiteralString = """
UPDATE send_queue q
SET status = 'sent', provider_message_id = 'wamid.bench-' || q.id, sent_at = now(), attempts = 1,
    claimed_at = now() - interval '1 day', updated_at = now()
FROM (SELECT id FROM send_queue WHERE status = 'pending' ORDER BY scheduled_for, id LIMIT %(rows)s) o
WHERE q.id = o.id
"""

BENCH_AUTOVACUUM_OFF: LiteralString = "ALTER TABLE send_queue SET (autovacuum_enabled = false)"
BENCH_AUTOVACUUM_ON: LiteralString = "ALTER TABLE send_queue RESET (autovacuum_enabled)"
BENCH_VACUUM_QUEUE: LiteralString = "VACUUM (ANALYZE) send_queue"

BENCH_QUEUE_SIZES: LiteralString = """
SELECT pg_table_size('send_queue') AS table_bytes,
       pg_indexes_size('send_queue') AS index_bytes,
       pg_relation_size('send_queue_due') AS due_index_bytes,
       (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'send_queue') AS dead_rows,
       (SELECT count(*) FROM send_queue) AS total_rows
"""
