-- sendonce schema, version 7: per-sender pacing, enforced in the claim.
--
-- Configuration: a NULL means "the channel's default" (Settings.pacing_*), so an operator
-- sets only what differs. State: the token bucket, the next spacing slot and the adaptive
-- throttle factor, updated only by a claim that holds the sender's row lock, so overlapping
-- dispatchers see one budget.
ALTER TABLE sender_accounts
    ADD COLUMN rate_per_second        double precision CHECK (rate_per_second > 0),
    ADD COLUMN burst                  integer CHECK (burst >= 1),
    ADD COLUMN min_spacing_seconds    double precision CHECK (min_spacing_seconds >= 0),
    ADD COLUMN spacing_jitter_seconds double precision CHECK (spacing_jitter_seconds >= 0),
    ADD COLUMN daily_message_cap      integer CHECK (daily_message_cap >= 0),
    ADD COLUMN weekly_message_cap     integer CHECK (weekly_message_cap >= 0),
    ADD COLUMN daily_invitation_cap   integer CHECK (daily_invitation_cap >= 0),
    ADD COLUMN weekly_invitation_cap  integer CHECK (weekly_invitation_cap >= 0),
    ADD COLUMN timezone               text NOT NULL DEFAULT 'UTC',
    -- ISO days of the week (1 = Monday); NULL: every day.
    ADD COLUMN window_days            smallint[] CHECK (window_days <@ ARRAY[1, 2, 3, 4, 5, 6, 7]::smallint[]),
    -- Local wall-clock times; NULL: all day. An end before the start wraps past midnight.
    ADD COLUMN window_start           time,
    ADD COLUMN window_end             time,
    -- Warm-up: daily caps ramp linearly from warmup_start_daily to the full cap over
    -- warmup_days days from warmup_started_at.
    ADD COLUMN warmup_started_at      timestamptz,
    ADD COLUMN warmup_days            integer CHECK (warmup_days >= 1),
    ADD COLUMN warmup_start_daily     integer CHECK (warmup_start_daily >= 0),
    ADD COLUMN tokens                 double precision,
    ADD COLUMN tokens_at              timestamptz,
    ADD COLUMN next_slot_at           timestamptz,
    ADD COLUMN throttle_factor        double precision NOT NULL DEFAULT 1
        CHECK (throttle_factor > 0 AND throttle_factor <= 1),
    ADD COLUMN throttled_at           timestamptz,
    ADD COLUMN last_claimed_at        timestamptz,
    ADD COLUMN paused_by              text,
    ADD CONSTRAINT sender_window_both_or_neither CHECK ((window_start IS NULL) = (window_end IS NULL));

-- What a row spends of its sender's caps. Invitations (LinkedIn) have their own caps.
ALTER TABLE send_queue
    ADD COLUMN action text NOT NULL DEFAULT 'message' CHECK (action IN ('message', 'invitation'));

-- The senders a campaign sends from (one today; a pool in the campaign engine).
CREATE TABLE campaign_senders (
    campaign_id       uuid NOT NULL REFERENCES campaigns (id),
    sender_account_id uuid NOT NULL REFERENCES sender_accounts (id),
    added_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, sender_account_id)
);
CREATE INDEX campaign_senders_by_sender ON campaign_senders (sender_account_id);
INSERT INTO campaign_senders (campaign_id, sender_account_id)
SELECT id, sender_account_id FROM campaigns;

-- The claim reads, per sender and campaign, the first due rows: O(rows claimed) whatever the
-- backlog, and one index probe tells whether a sender has anything due.
CREATE INDEX send_queue_due_by_sender
    ON send_queue (sender_account_id, action, campaign_id, scheduled_for, id)
    WHERE status = 'pending';
-- Cap usage: a sender's rows claimed since a point in time that may have reached the provider.
CREATE INDEX send_queue_usage ON send_queue (sender_account_id, claimed_at)
    WHERE status IN ('claimed', 'sending', 'sent', 'unknown');

-- Whether `at` falls in a sender's sending window (mirrors shared.pacing.window_open, and a
-- test holds the two to the same answers). A window whose end is before its start wraps past
-- midnight and belongs to the day it opened on.
CREATE FUNCTION sendonce_window_open(at timestamptz, tz text, days smallint[], opens time, closes time)
RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN opens IS NULL OR closes IS NULL THEN
            days IS NULL OR extract(isodow FROM local)::smallint = ANY (days)
        WHEN opens < closes THEN
            local::time >= opens AND local::time < closes
            AND (days IS NULL OR extract(isodow FROM local)::smallint = ANY (days))
        WHEN local::time >= opens THEN
            days IS NULL OR extract(isodow FROM local)::smallint = ANY (days)
        WHEN local::time < closes THEN
            days IS NULL OR extract(isodow FROM local - interval '1 day')::smallint = ANY (days)
        ELSE false
    END
    FROM (SELECT at AT TIME ZONE tz AS local) AS l
$$;

-- Every pause, resume and reconfiguration of a sender, with who and why.
CREATE TABLE sender_decisions (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sender_account_id uuid NOT NULL REFERENCES sender_accounts (id),
    action            text NOT NULL CHECK (action IN ('pause', 'resume', 'configure')),
    decided_by        text NOT NULL,
    reason            text NOT NULL DEFAULT '',
    paused_until      timestamptz,
    decided_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sender_decisions_by_sender ON sender_decisions (sender_account_id, decided_at);
