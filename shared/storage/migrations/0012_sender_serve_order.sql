-- sendonce schema, version 12: the claim walks senders in the order it serves them.
--
-- LOCK_DUE_SENDERS serves the least recently served senders first (last_claimed_at, then id)
-- and stops at the claim's limit. Without an index in that order the planner had to find every
-- eligible sender, probe each one's due rows, and sort them all: 73 ms per claim at 1,000 senders
-- with due rows (issue 10's claim-scale finding: ~125 ms at 1,000 senders against 22-30 ms at 20).
-- With it, the walk stops after the first `limit` senders that have something due: 3 ms.
CREATE INDEX sender_accounts_serve_order ON sender_accounts (last_claimed_at NULLS FIRST, id)
    WHERE status = 'active';
