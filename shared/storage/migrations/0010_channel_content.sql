-- sendonce schema, version 10: what each channel needs to reach cold contacts (issue 8,
-- sections 1-3). A message's content beyond plain text, the 24-hour customer service window
-- per contact, WhatsApp's approved templates, and LinkedIn profile ids.

-- A step's and a row's content: NULL is plain text (`body`), as before. Otherwise a JSON
-- object with a `kind` (text | template | media | invitation | inmail) that the channel
-- package's pydantic models validate at enqueue and read at send (shared/channels/*/content.py).
-- `body` stays the readable text of the message (the audit's and read-back's), so it is kept
-- NOT NULL: a template's body is its name and parameters.
ALTER TABLE campaign_steps ADD COLUMN content jsonb CHECK (content IS NULL OR jsonb_typeof(content) = 'object');
ALTER TABLE send_queue ADD COLUMN content jsonb CHECK (content IS NULL OR jsonb_typeof(content) = 'object');

-- The customer service window (WhatsApp) and the standard messaging window (Messenger) open
-- for 24 hours at each message the contact sends; the webhook moves this forward, never back.
ALTER TABLE contacts
    ADD COLUMN last_inbound_at timestamptz,
    -- LinkedIn: the Unipile provider id of the profile the address (a profile URL or public
    -- identifier) names, looked up once and kept.
    ADD COLUMN provider_profile_id text,
    ADD COLUMN provider_profile_checked_at timestamptz;

-- Which WhatsApp Business Account a phone number belongs to: templates belong to the WABA.
ALTER TABLE sender_accounts ADD COLUMN business_account_id text;

-- The templates of a WABA as Graph's GET /{waba-id}/message_templates last returned them.
CREATE TABLE whatsapp_templates (
    business_account_id    text NOT NULL,
    name                   text NOT NULL,
    language               text NOT NULL,
    status                 text NOT NULL,
    category               text,
    template_id            text,
    -- Positional {{n}} or named {{name}} parameters counted in the components.
    body_parameters        integer NOT NULL DEFAULT 0,
    header_format          text,
    header_parameters      integer NOT NULL DEFAULT 0,
    buttons                jsonb NOT NULL DEFAULT '[]',
    components             jsonb NOT NULL DEFAULT '[]',
    synced_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (business_account_id, name, language)
);

-- A step may wait for a provider event instead of the previous step's send: "after the
-- invitation is accepted (Unipile's new_relation webhook), wait delay_seconds, send message 1".
-- Such a step is queued by the webhook that stores the event, never by SETTLE_SENT.
ALTER TABLE campaign_steps ADD COLUMN after_event text
    CHECK (after_event IS NULL OR (after_event <> '' AND position > 1));
