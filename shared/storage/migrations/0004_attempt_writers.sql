-- sendonce schema, version 4: each provider attempt names the idempotency-record writer it ran
-- under. An attempt recorded as `not_called`, or with a provably-unsent outcome, is the proof
-- that lets a later put release an INPROGRESS record that writer left behind (its delete
-- failed, or its put landed after it gave up), instead of leaving the message `unknown`.
ALTER TABLE send_attempts ADD COLUMN writer text;
CREATE INDEX send_attempts_by_writer ON send_attempts (writer) WHERE writer IS NOT NULL;
