//! The engine's settings: how it treats upstreams. Every duration has a default that suits production; tests shorten
//! them.

use std::time::Duration;

use crate::config::{parse, settings};

pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

settings! {
    /// How the engine treats upstreams.
    #[derive(Debug, Clone)]
    pub struct EngineSettings: Default {
        /// OpenAI's base URL (tests, demos and benchmarks point it at the mock upstream).
        pub openai_base_url: String [
            OPENAI_BASE_URL = "RELIABLEGPT_OPENAI_BASE_URL", parse::http_url, default DEFAULT_OPENAI_BASE_URL.to_owned()
        ],
        /// Operator's model catalog (TOML) extending the shipped one.
        pub model_catalog: Option<String> [MODEL_CATALOG = "RELIABLEGPT_MODEL_CATALOG", parse::text, optional],
        pub max_retries: u32 [MAX_RETRIES = "RELIABLEGPT_MAX_RETRIES", parse::count, default 2],
        pub retry_base: Duration [
            RETRY_BASE_MS = "RELIABLEGPT_RETRY_BASE_MS", parse::millis, default Duration::from_millis(250)
        ],
        pub retry_after_cap: Duration [
            RETRY_AFTER_CAP_MS = "RELIABLEGPT_RETRY_AFTER_CAP_MS", parse::millis, default Duration::from_secs(10)
        ],
        pub connect_timeout: Duration [
            CONNECT_TIMEOUT_MS = "RELIABLEGPT_CONNECT_TIMEOUT_MS", parse::millis, default Duration::from_secs(3)
        ],
        pub first_byte_timeout: Duration [
            FIRST_BYTE_TIMEOUT_MS = "RELIABLEGPT_FIRST_BYTE_TIMEOUT_MS", parse::millis, default Duration::from_secs(10)
        ],
        pub stream_idle_timeout: Duration [
            STREAM_IDLE_TIMEOUT_MS = "RELIABLEGPT_STREAM_IDLE_TIMEOUT_MS", parse::millis, default Duration::from_secs(10)
        ],
        pub request_timeout: Duration [
            REQUEST_TIMEOUT_MS = "RELIABLEGPT_REQUEST_TIMEOUT_MS", parse::millis, default Duration::from_secs(60)
        ],
        /// How long a key marked invalid is skipped before one request may try it again.
        pub key_retry_after: Duration [
            KEY_RETRY_AFTER_SECS = "RELIABLEGPT_KEY_RETRY_AFTER_SECS", parse::secs, default Duration::from_secs(600)
        ],
        pub breaker_failures: u32 [BREAKER_FAILURES = "RELIABLEGPT_BREAKER_FAILURES", parse::positive, default 5],
        pub breaker_open: Duration [
            BREAKER_OPEN_MS = "RELIABLEGPT_BREAKER_OPEN_MS", parse::millis, default Duration::from_secs(30)
        ],
        /// Cooldown of a target that answered 429 without Retry-After.
        pub rate_limit_cooldown: Duration [
            RATE_LIMIT_COOLDOWN_MS = "RELIABLEGPT_RATE_LIMIT_COOLDOWN_MS", parse::millis, default Duration::from_secs(10)
        ],
        /// Largest upstream JSON answer read into memory; a bigger one fails its attempt (the next target is tried).
        pub max_upstream_body: usize [
            MAX_UPSTREAM_BODY_BYTES = "RELIABLEGPT_MAX_UPSTREAM_BODY_BYTES", parse::byte_count, default 64 << 20
        ],
        /// Largest single server-sent event of an upstream stream; a bigger one counts as a broken stream.
        pub max_sse_event: usize [
            MAX_SSE_EVENT_BYTES = "RELIABLEGPT_MAX_SSE_EVENT_BYTES", parse::byte_count, default 4 << 20
        ],
        /// How long an opened key set stays in memory (revocation evicts it at once on every replica); zero: not at all.
        pub key_set_cache: Duration [
            KEY_SET_CACHE_SECS = "RELIABLEGPT_KEY_SET_CACHE_SECS", parse::secs_or_zero, default Duration::from_secs(30)
        ],
        /// How long cached key sets keep serving after the revocation listener lost the database (no token can be
        /// revoked meanwhile); then requests that need the database get `503` until it is back. Zero: stop at once.
        pub db_outage_grace: Duration [
            DB_OUTAGE_GRACE_SECS = "RELIABLEGPT_DB_OUTAGE_GRACE_SECS", parse::secs_or_zero, default Duration::from_secs(60)
        ],
    }
}
