-- Anthropic and Gemini keys are fallback targets too (the engine translates chat completions to their APIs). Their
-- optional base_url lives in the target like an OpenAI-compatible key's.
ALTER TABLE vault_provider_keys DROP CONSTRAINT IF EXISTS vault_provider_keys_provider_check;
ALTER TABLE vault_provider_keys
    ADD CONSTRAINT vault_provider_keys_provider_check CHECK (provider IN ('openai', 'azure', 'anthropic', 'gemini'));
