-- sendonce schema, version 5: a sender account's default region (ISO 3166-1 alpha-2) reads
-- national-format WhatsApp numbers ("07700 900123" is +44 7700 900123 for GB). Contacts keep
-- E.164, so changing the region never changes a stored contact.
ALTER TABLE sender_accounts
    ADD COLUMN default_region text CHECK (default_region ~ '^[A-Z]{2}$');
