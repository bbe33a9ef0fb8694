-- sendonce schema, version 9: evidence of absence (policy resend_if_silent, shared/absence.py).

-- The reconciler's latest judgement of an `unknown` row: whether the evidence of absence
-- holds, which condition fails, and the counts it saw. Overwritten at every sweep (held rows
-- are judged again and again; only a requeue is a queue_decisions row), read by
-- `sendonce unknown`.
ALTER TABLE send_queue ADD COLUMN absence_check jsonb;
ALTER TABLE send_queue ADD COLUMN absence_checked_at timestamptz;

-- The pipe condition counts a sender's messages sent around an attempt whose webhooks arrived.
CREATE INDEX message_ledger_by_sent_at ON message_ledger (channel, sent_at);
