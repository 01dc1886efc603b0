-- Which provider key created each stored Responses API response (ids only, never content). A follow-up
-- (`previous_response_id`) or a call about a stored response must reach the provider account that holds it.
-- Deleted with the key set; a removed provider key leaves its rows with key_id NULL, so the gateway can say why a
-- response cannot be reached any more instead of calling it unknown.
CREATE TABLE vault_response_keys (
    key_set_id  uuid NOT NULL REFERENCES vault_key_sets (id) ON DELETE CASCADE,
    response_id text NOT NULL CHECK (char_length(response_id) BETWEEN 1 AND 128),
    key_id      uuid REFERENCES vault_provider_keys (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_set_id, response_id)
);
CREATE INDEX vault_response_keys_key ON vault_response_keys (key_id);
-- Providers keep stored responses for 30 days by default; older records are pruned hourly.
CREATE INDEX vault_response_keys_created ON vault_response_keys (created_at);
