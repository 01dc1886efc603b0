-- Alerts: per-minute event counts, per-key-set thresholds and recipients, the alerts themselves and the mail outbox.
-- Nothing here is secret: key ids (never keys), instance ids, model names, counts, email addresses. Verification tokens
-- are stored only as SHA-256 hashes.

-- Engine events aggregated per key set and bucket (one minute by default). Replicas add to the same rows with upserts.
-- `kind` is 'attempt' (class = attempt result: success, transient, rate_limited, ...) or 'outcome' (class = request
-- outcome: success, fallback_success, failed, shed, ...; key_id is the nil uuid).
CREATE TABLE alerts_event_counts (
    key_set_id uuid NOT NULL REFERENCES vault_key_sets (id) ON DELETE CASCADE,
    bucket     timestamptz NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('attempt', 'outcome')),
    class      text NOT NULL CHECK (char_length(class) <= 64),
    model      text NOT NULL CHECK (char_length(model) <= 256),
    provider   text NOT NULL CHECK (char_length(provider) <= 32),
    instance   text NOT NULL CHECK (char_length(instance) <= 128),
    key_id     uuid NOT NULL,
    count      bigint NOT NULL CHECK (count > 0),
    PRIMARY KEY (key_set_id, bucket, kind, class, model, provider, instance, key_id)
);
-- Retention sweeps by age.
CREATE INDEX alerts_event_counts_bucket ON alerts_event_counts (bucket);

-- Thresholds per key set; a key set without a row uses the defaults.
CREATE TABLE alerts_settings (
    key_set_id             uuid PRIMARY KEY REFERENCES vault_key_sets (id) ON DELETE CASCADE,
    enabled                boolean NOT NULL,
    min_errors             integer NOT NULL CHECK (min_errors > 0),
    window_seconds         integer NOT NULL CHECK (window_seconds > 0),
    spike_factor           double precision NOT NULL CHECK (spike_factor >= 1),
    cooldown_seconds       integer NOT NULL CHECK (cooldown_seconds >= 0),
    alert_on_total_failure boolean NOT NULL,
    -- Extra recipients (the key set's user_email is always one).
    emails                 text[] NOT NULL DEFAULT '{}',
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- Confirmation state of each address a key set named (its user_email included; that one's confirmation is mirrored
-- into vault_key_sets.email_verified through the vault).
CREATE TABLE alerts_recipients (
    key_set_id       uuid NOT NULL REFERENCES vault_key_sets (id) ON DELETE CASCADE,
    email            text NOT NULL CHECK (char_length(email) <= 254),
    verified_at      timestamptz,
    -- SHA-256 of the pending single-use verification token; NULL once used.
    token_hash       bytea UNIQUE CHECK (octet_length(token_hash) = 32),
    token_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_set_id, email)
);

-- One row per spike (or total failure), from opening to resolution.
CREATE TABLE alerts_alerts (
    id          uuid PRIMARY KEY,
    key_set_id  uuid NOT NULL REFERENCES vault_key_sets (id) ON DELETE CASCADE,
    opened_at   timestamptz NOT NULL,
    resolved_at timestamptz,
    trigger     text NOT NULL CHECK (trigger IN ('error_spike', 'total_failure')),
    -- What the digest said: window, counts by class/model/instance/key, rate vs baseline, what reliablegpt did.
    summary     jsonb NOT NULL,
    recipients  text[] NOT NULL
);
-- At most one open alert per key set, whichever replica evaluates: the loser of a race inserts nothing.
CREATE UNIQUE INDEX alerts_alerts_one_open ON alerts_alerts (key_set_id) WHERE resolved_at IS NULL;
CREATE INDEX alerts_alerts_recent ON alerts_alerts (key_set_id, opened_at DESC);

-- Mail waiting to go out. Workers claim rows with FOR UPDATE SKIP LOCKED and hold the lock while sending, so two
-- replicas never send the same row. Bodies are dropped once sent (a verification link must not outlive its use).
CREATE TABLE alerts_outbox (
    id              uuid PRIMARY KEY,
    key_set_id      uuid NOT NULL REFERENCES vault_key_sets (id) ON DELETE CASCADE,
    alert_id        uuid REFERENCES alerts_alerts (id) ON DELETE CASCADE,
    kind            text NOT NULL CHECK (kind IN ('verification', 'spike', 'resolved')),
    recipient       text NOT NULL CHECK (char_length(recipient) <= 254),
    subject         text,
    body_text       text,
    body_html       text,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'capped', 'expired')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX alerts_outbox_due ON alerts_outbox (next_attempt_at) WHERE state = 'pending';
-- The per-address cap counts what went to an address in the last hour, across key sets.
CREATE INDEX alerts_outbox_sent_to ON alerts_outbox (lower(recipient), sent_at) WHERE state = 'sent';
CREATE INDEX alerts_outbox_alert ON alerts_outbox (alert_id);
