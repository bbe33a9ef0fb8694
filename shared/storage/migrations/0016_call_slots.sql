-- sendonce schema, version 16: the send-time gate (shared/call_slots.py).
--
-- The claim bounds how fast a sender's rows are claimed; between a claim and its provider call
-- lie a Postgres statement and a DynamoDB write whose latency varies, so sends claimed in
-- different seconds could reach the provider in the same one. Right before its provider call,
-- each send of a paced sender takes a call slot here, on the database's clock that every
-- dispatcher shares:
-- * next_call_at: a rate-paced sender's next free slot; slots are 1/rate apart.
-- * last_call_at: a spaced sender's last granted call; the next is granted no sooner than its
--   spacing after it.
-- A sender's row is created by its first gated call. Its own table, not sender_accounts, so a
-- slot never waits for a claim's lock on the sender row and a claim never skips a sender
-- because a slot was being taken.
CREATE TABLE sender_call_slots (
    sender_account_id uuid PRIMARY KEY REFERENCES sender_accounts (id) ON DELETE CASCADE,
    next_call_at      timestamptz NOT NULL,
    last_call_at      timestamptz
);

-- When the gate let this row's latest provider call start (the audit, and the tests' view of
-- the gate's spacing). NULL for unpaced senders and rows never called.
ALTER TABLE send_queue ADD COLUMN call_granted_at timestamptz;
