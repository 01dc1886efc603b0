-- The semantic cache: one row per cached answer, scoped to a key set and a customer instance.
-- Question and answer texts are customer data: AES-256-GCM ciphertexts under a per-key-set cache key derived from the
-- master key (version in master_key_version). The hashes are HMAC-SHA256 under the same derivation, so they reveal
-- nothing without the master key. Vectors stay plain for the nearest-neighbour search.
CREATE TABLE cache_entries (
    id                 uuid PRIMARY KEY,
    key_set_id         uuid NOT NULL REFERENCES vault_key_sets (id) ON DELETE CASCADE,
    instance_id        text NOT NULL CHECK (char_length(instance_id) BETWEEN 1 AND 128),
    -- HMAC of everything before the question (system prompt, earlier turns, answer-shaping options): must match exactly.
    context_hash       bytea NOT NULL CHECK (octet_length(context_hash) = 32),
    -- HMAC of the whole canonical conversation: the exact-match path.
    exact_hash         bytea NOT NULL CHECK (octet_length(exact_hash) = 32),
    -- The question's embedding; NULL when no embedder was configured (exact matches only).
    embedding          halfvec(384),
    master_key_version integer NOT NULL CHECK (master_key_version > 0),
    question           bytea NOT NULL,
    response           bytea NOT NULL,
    model              text CHECK (char_length(model) <= 256),
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL
);

CREATE UNIQUE INDEX cache_entries_exact ON cache_entries (key_set_id, instance_id, exact_hash);
-- Quota eviction (oldest first) per key set, and purges.
CREATE INDEX cache_entries_age ON cache_entries (key_set_id, created_at);
CREATE INDEX cache_entries_expiry ON cache_entries (expires_at);
-- Filtered by key set, instance and context inside the search (hnsw.iterative_scan), threshold applied afterwards.
CREATE INDEX cache_entries_embedding ON cache_entries USING hnsw (embedding halfvec_cosine_ops);
