-- Queued mail holds customer data (instances, models, masked keys) and single-use verification links: sealed at rest
-- (AES-256-GCM under a key derived from the master key, version in master_key_version) instead of plain text.
-- Mail still pending from before is dropped: its plain bodies must not survive, and alerts re-queue on the next spike.
DELETE FROM alerts_outbox WHERE state = 'pending';
ALTER TABLE alerts_outbox
    DROP COLUMN subject,
    DROP COLUMN body_text,
    DROP COLUMN body_html,
    ADD COLUMN sealed bytea,
    ADD COLUMN master_key_version integer CHECK (master_key_version > 0);
