-- sendonce schema, version 3: reconciliation walks every unknown row, not only the oldest.
-- Held rows never change, so ordering by updated_at alone would re-read the same first batch
-- forever; reconciled_at moves each examined row to the back of the line.
ALTER TABLE send_queue ADD COLUMN reconciled_at timestamptz;
DROP INDEX send_queue_unknown;
CREATE INDEX send_queue_unknown ON send_queue (reconciled_at NULLS FIRST, updated_at) WHERE status = 'unknown';
