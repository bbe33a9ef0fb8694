-- sendonce schema, version 8: the campaign engine. Sequences stored per campaign and advanced
-- one step at a time, a campaign lifecycle, per-contact sequence state (who was stopped, why),
-- a contact's sender for its whole sequence, the cross-campaign policy.
--
-- The runner applies every pending migration in one transaction, and Postgres cannot use an
-- enum value in the transaction that added it: nothing below may mention 'cancelled' as a
-- queue_status (no index predicate, no CHECK, no SQL function body). Statements that need it
-- run later, from shared/storage/sql.py.
ALTER TYPE queue_status ADD VALUE IF NOT EXISTS 'cancelled';

-- --- campaigns ------------------------------------------------------------------------------
ALTER TABLE campaigns DROP CONSTRAINT campaigns_status_check;
UPDATE campaigns SET status = 'completed' WHERE status = 'done';
ALTER TABLE campaigns
    ADD CONSTRAINT campaigns_status_check
        CHECK (status IN ('draft', 'active', 'paused', 'completed', 'cancelled')),
    -- 'skip': a contact queued or messaged by another campaign of one of this campaign's
    -- senders within Settings.cross_campaign_window_seconds is skipped (seed 000).
    ADD COLUMN cross_campaign_policy text NOT NULL DEFAULT 'skip'
        CHECK (cross_campaign_policy IN ('skip', 'allow')),
    -- Provider event names that stop a contact's sequence: an event_type ('message_reaction')
    -- or event_type:status ('status:read'). Replies always stop it, listed or not.
    ADD COLUMN stop_on_events text[] NOT NULL DEFAULT '{}',
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

-- The steps of a campaign's sequence. Step 1 is queued when a contact joins an active
-- campaign; step N+1 when step N is settled `sent` (by the statement that settles it), due
-- delay_seconds after step N was sent, moved into the sender's window. (An absolute send
-- time per step belongs to issue 8 and will be one more nullable column here.)
CREATE TABLE campaign_steps (
    campaign_id   uuid NOT NULL REFERENCES campaigns (id),
    position      smallint NOT NULL CHECK (position >= 1),
    message_type  text NOT NULL CHECK (message_type <> ''),
    body          text NOT NULL CHECK (body <> ''),
    delay_seconds integer NOT NULL DEFAULT 0 CHECK (delay_seconds >= 0),
    action        text NOT NULL DEFAULT 'message' CHECK (action IN ('message', 'invitation')),
    PRIMARY KEY (campaign_id, position),
    UNIQUE (campaign_id, message_type)
);

-- Campaigns that existed before: every step was queued at enqueue, timed from the enqueue.
-- Their steps are recovered in that order, each delay taken as the gap to the previous one.
INSERT INTO campaign_steps (campaign_id, position, message_type, body, delay_seconds, action)
SELECT campaign_id, row_number() OVER w, message_type, body,
       GREATEST(0, delay - COALESCE(lag(delay) OVER w, 0)), action
FROM (
    SELECT campaign_id, message_type, min(body) AS body, min(action) AS action,
           GREATEST(0, floor(extract(epoch FROM min(scheduled_for - created_at))))::int AS delay
    FROM send_queue
    GROUP BY campaign_id, message_type
) AS legacy
WINDOW w AS (PARTITION BY campaign_id ORDER BY delay, message_type);

-- Who did what to a campaign, and why.
CREATE TABLE campaign_decisions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id uuid NOT NULL REFERENCES campaigns (id),
    action      text NOT NULL CHECK (action IN ('create', 'start', 'pause', 'resume', 'cancel', 'complete', 'reopen')),
    from_status text,
    to_status   text NOT NULL,
    decided_by  text NOT NULL,
    reason      text NOT NULL DEFAULT '',
    decided_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX campaign_decisions_by_campaign ON campaign_decisions (campaign_id, decided_at);

-- --- a contact's sequence in a campaign ----------------------------------------------------------
--   waiting   member of a draft campaign, nothing queued yet
--   active    its sequence runs (a step is queued, in flight, or just sent)
--   completed its last step was sent
--   halted    a step ended failed or unknown: nothing follows unless that step is sent after
--             all (redrive, evidence, an operator), which resumes it
--   stopped   for good: a reply, an opt-out, an operator, a configured event, a cancel
--   skipped   never queued: the cross-campaign policy
ALTER TABLE campaign_contacts
    ADD COLUMN sender_account_id uuid REFERENCES sender_accounts (id),
    ADD COLUMN sequence_state text NOT NULL DEFAULT 'active'
        CHECK (sequence_state IN ('waiting', 'active', 'completed', 'halted', 'stopped', 'skipped')),
    ADD COLUMN stop_cause text CHECK (stop_cause IN ('reply', 'opt_out', 'operator', 'event', 'campaign_cancelled',
                                                     'failed', 'unknown', 'cross_campaign')),
    ADD COLUMN stopped_reason text,
    ADD COLUMN stopped_at timestamptz;
ALTER TABLE campaign_contacts ALTER COLUMN sequence_state SET DEFAULT 'waiting';
UPDATE campaign_contacts cc SET sender_account_id = cp.sender_account_id
FROM campaigns cp WHERE cp.id = cc.campaign_id;
-- A contact whose sequence started always has its sender (one stopped or skipped before it
-- started has none).
ALTER TABLE campaign_contacts ADD CONSTRAINT campaign_contacts_started_have_sender
    CHECK (sequence_state NOT IN ('active', 'halted', 'completed') OR sender_account_id IS NOT NULL);

-- Stops and replies find a contact's memberships; stats and pools read per campaign.
CREATE INDEX campaign_contacts_by_contact ON campaign_contacts (contact_id);
-- Starting a campaign, and completion's "nobody waiting", read only the waiting members.
CREATE INDEX campaign_contacts_waiting ON campaign_contacts (campaign_id) WHERE sequence_state = 'waiting';
-- The sweeper looks back at recent stops for rows that raced them (see sql.CANCEL_STRAGGLERS).
CREATE INDEX campaign_contacts_recently_stopped ON campaign_contacts (stopped_at)
    WHERE sequence_state = 'stopped';

-- The person on the other side of a provider event (the sender of a reply, the recipient whose
-- status it is), so replies and stop events are found per contact, and audit shows them.
ALTER TABLE provider_events ADD COLUMN contact text;
CREATE INDEX provider_events_by_contact ON provider_events (channel, contact, received_at) WHERE contact IS NOT NULL;

-- The first instant at or after `at` inside a sender's window (`at` itself when open); mirrors
-- shared.pacing.next_window_open, and a test holds the two to the same answers: the window's
-- opening on each of the next eight local days, the first that is open. An opening time that
-- occurs twice (the hour a fall-back transition repeats) means its first occurrence, as
-- zoneinfo's fold=0 does; Postgres alone reads the second, hence the LEAST of the two readings.
-- PL/pgSQL rather than SQL: a SQL function with subqueries is not inlined and cost about 2 ms a
-- call; this one keeps its plans for the session. Called only for senders with a window.
CREATE FUNCTION sendonce_next_window_open(at timestamptz, tz text, days smallint[], opens time, closes time)
RETURNS timestamptz LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    local_day date := (at AT TIME ZONE tz)::date;
    opening timestamp;
    candidate timestamptz;
BEGIN
    IF sendonce_window_open(at, tz, days, opens, closes) THEN
        RETURN at;
    END IF;
    FOR d IN 0..7 LOOP
        opening := (local_day + d) + COALESCE(opens, time '00:00');
        candidate := LEAST(opening AT TIME ZONE tz, ((opening - interval '1 hour') AT TIME ZONE tz) + interval '1 hour');
        IF candidate >= at AND sendonce_window_open(candidate, tz, days, opens, closes) THEN
            RETURN candidate;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
