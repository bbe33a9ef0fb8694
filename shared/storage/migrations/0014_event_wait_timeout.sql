-- sendonce schema, version 14: a step that waits for a provider event gives up after a while.
--
-- A LinkedIn follow-up that waits for the invitation to be accepted (after_event new_relation)
-- used to wait forever, and its campaign never completed. event_timeout_seconds bounds the
-- wait, counted from the previous step's send; past it the sweeper stops the contact's sequence
-- with stop_cause 'event_timeout' and the reason, and the campaign can complete.
ALTER TABLE campaign_steps
    ADD COLUMN event_timeout_seconds integer
        CHECK (event_timeout_seconds IS NULL OR (after_event IS NOT NULL AND event_timeout_seconds > 0));

ALTER TABLE campaign_contacts DROP CONSTRAINT campaign_contacts_stop_cause_check;
ALTER TABLE campaign_contacts ADD CONSTRAINT campaign_contacts_stop_cause_check
    CHECK (stop_cause IN ('reply', 'opt_out', 'operator', 'event', 'campaign_cancelled', 'failed', 'unknown',
                          'cross_campaign', 'event_timeout'));
