-- Key sets (tenants) and their provider keys. Nothing here is usable without the customer's token:
-- tokens are stored only as HMAC-SHA256(pepper, token); provider keys are AES-256-GCM ciphertexts under a per-set data key
-- that is itself wrapped under HKDF(master key, token).
CREATE TABLE vault_key_sets (
    id                 uuid PRIMARY KEY,
    token_hash         bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    wrapped_dek        bytea NOT NULL,
    master_key_version integer NOT NULL CHECK (master_key_version > 0),
    user_email         text NOT NULL CHECK (char_length(user_email) <= 254),
    email_verified     boolean NOT NULL DEFAULT false,
    policy             jsonb NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE vault_provider_keys (
    id                 uuid PRIMARY KEY,
    key_set_id         uuid NOT NULL REFERENCES vault_key_sets (id) ON DELETE CASCADE,
    position           integer NOT NULL CHECK (position >= 0),
    provider           text NOT NULL CHECK (provider IN ('openai', 'azure')),
    ciphertext         bytea NOT NULL,
    masked             text NOT NULL,
    -- Non-secret routing settings: base_url, or Azure endpoint / api_version / deployments.
    target             jsonb NOT NULL DEFAULT '{}',
    status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'invalid')),
    last_error         text,
    invalid_since      timestamptz,
    cooling_down_until timestamptz,
    last_used_at       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    -- Deferred so a reorder can swap positions inside one transaction.
    CONSTRAINT vault_provider_keys_position_unique UNIQUE (key_set_id, position) DEFERRABLE INITIALLY DEFERRED
);
