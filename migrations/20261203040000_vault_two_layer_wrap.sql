-- format 1: the data key is wrapped in one layer under HKDF(master key, token); provider keys are sealed with AAD = key set +
--           key + purpose.
-- format 2: the data key is wrapped under a key derived from the token (inner), and that under a key derived from master
--           key version `master_key_version` (outer), so `reliablegpt rotate-master-key` re-wraps the outer layer without
--           any token; provider keys' AAD also binds their provider and a digest of their target (base_url / endpoint /
--           api_version / deployments).
-- Existing rows stay format 1 until their token next authenticates (the service upgrades them then).
ALTER TABLE vault_key_sets
    ADD COLUMN format smallint NOT NULL DEFAULT 1 CHECK (format IN (1, 2)),
    -- The RELIABLEGPT_TOKEN_PEPPER version token_hash was computed under; re-hashed under the active one on use.
    ADD COLUMN pepper_version integer NOT NULL DEFAULT 1 CHECK (pepper_version > 0);
