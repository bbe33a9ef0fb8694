-- sendonce schema, version 11: personalised content, suppression (opt-out), contact fields for
-- import, absolute send times (issue 8, sections 4-7).

-- --- contacts: the fields a step's template reads -------------------------------------------------
-- Custom fields by lower-case name ({"first_name": "Ada", "company": "ACME"}); an import or an
-- enqueue merges its own over what is stored. The LinkedIn profile URL is kept as given, for the
-- profile lookup that turns it into a provider id.
ALTER TABLE contacts
    ADD COLUMN fields jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(fields) = 'object'),
    ADD COLUMN linkedin_profile_url text;

-- --- personalised bodies, rendered once when the contact joins the campaign -----------------------
-- rendered_bodies[position] is step `position`'s text for this contact. QUEUE_FIRST_STEP and
-- SETTLE_SENT copy it into the queue row, so what is stored is what is sent, and a retry or a
-- re-enqueue never renders again. NULL only for members added before this migration, whose
-- steps were literal text.
ALTER TABLE campaign_contacts ADD COLUMN rendered_bodies text[];

-- --- absolute send times -----------------------------------------------------------------------
-- A step is due no earlier than its send_at (and, for step 1, the campaign's), and no earlier than
-- its relative delay; then moved into the sender's window. The zone is kept to show the time as
-- the operator wrote it.
ALTER TABLE campaigns
    ADD COLUMN send_at timestamptz,
    ADD COLUMN send_at_timezone text;
ALTER TABLE campaign_steps
    ADD COLUMN send_at timestamptz,
    ADD COLUMN send_at_timezone text;

-- --- suppression list ------------------------------------------------------------------------------
-- A suppressed address gets nothing: it is refused at enqueue and a claimed row of it is cancelled
-- at the recovery point (MARK_SENDING). Scope: the whole workspace (sender_account_id NULL) or one
-- sender account. Rows are never deleted: a removal is recorded, so `sendonce audit` shows every
-- suppression, why, and who lifted it.
CREATE TABLE suppressions (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel           channel NOT NULL,
    address           text NOT NULL CHECK (address <> ''),
    sender_account_id uuid REFERENCES sender_accounts (id),
    source            text NOT NULL CHECK (source IN ('keyword', 'button', 'provider_preference', 'operator')),
    reason            text NOT NULL CHECK (reason <> ''),
    created_by        text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    removed_at        timestamptz,
    removed_by        text,
    removed_reason    text,
    CHECK ((removed_at IS NULL) = (removed_by IS NULL))
);
-- One active suppression per (channel, address, scope); the recovery point and the enqueue look
-- addresses up here.
CREATE UNIQUE INDEX suppressions_active ON suppressions (
    channel, address, COALESCE(sender_account_id, '00000000-0000-0000-0000-000000000000'::uuid)
) WHERE removed_at IS NULL;
CREATE INDEX suppressions_by_address ON suppressions (channel, address, created_at);
