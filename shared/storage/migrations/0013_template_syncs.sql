-- sendonce schema, version 13: WhatsApp template syncs, scheduled (issue 8).
--
-- One row per WhatsApp Business Account the sweeper keeps in sync (SENDONCE_WHATSAPP_BUSINESS_ACCOUNTS):
-- when it was last tried and last succeeded, how many templates it listed, the last error, and
-- the phone numbers (sender accounts) it owns, so a sender created after the sync still finds
-- its WABA's templates at enqueue.
CREATE TABLE whatsapp_template_syncs (
    business_account_id  text PRIMARY KEY,
    phone_number_ids     text[] NOT NULL DEFAULT '{}',
    last_attempt_at      timestamptz NOT NULL DEFAULT now(),
    synced_at            timestamptz,
    templates            integer,
    last_error           text
);
