//! What went wrong with one upstream attempt, and so what to do next. The upstream's error `code`/`type` decide first,
//! the HTTP status second, the message text last.

use std::time::Duration;

use serde::Serialize;

/// The class of a failed attempt. Low-cardinality: also a metric label and a response header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// 5xx, 529, connection reset or refused: retry the same target with backoff.
    Transient,
    /// 429: wait (if Retry-After is short) or cool the target down and move on.
    RateLimited,
    /// Revoked key, wrong key, no quota: mark the key and rotate to the next key.
    Credential,
    /// The prompt does not fit: jump to a model with a larger context window.
    ContextTooLong,
    /// The model or deployment does not exist for this key: next model.
    ModelNotFound,
    /// No first byte (or no progress) in time: next target, no retry.
    Timeout,
    /// The request itself is wrong (other 4xx): return the upstream's answer unchanged.
    CallerFault,
    /// The provider's content filter refused: return the upstream's answer unchanged.
    ContentFilter,
    /// Not an upstream answer: the target's circuit breaker is open, so it was skipped without a call.
    BreakerOpen,
    /// The gateway refused the target: its host resolved to an address the egress policy forbids, or its answer (or
    /// one stream event) was larger than the limit. Final for the target (no retry); the next target is tried.
    Refused,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::RateLimited => "rate_limited",
            Self::Credential => "credential",
            Self::ContextTooLong => "context_too_long",
            Self::ModelNotFound => "model_not_found",
            Self::Timeout => "timeout",
            Self::CallerFault => "caller_fault",
            Self::ContentFilter => "content_filter",
            Self::BreakerOpen => "breaker_open",
            Self::Refused => "refused",
        }
    }

    pub const ALL: [FailureClass; 10] = [
        Self::Transient,
        Self::RateLimited,
        Self::Credential,
        Self::ContextTooLong,
        Self::ModelNotFound,
        Self::Timeout,
        Self::CallerFault,
        Self::ContentFilter,
        Self::BreakerOpen,
        Self::Refused,
    ];

    /// Whether the caller must see the upstream's own answer (no retry, no fallback).
    pub fn is_final(self) -> bool {
        matches!(self, Self::CallerFault | Self::ContentFilter)
    }
}

/// Classifies an upstream HTTP error answer.
pub fn classify_response(status: u16, body: &[u8]) -> FailureClass {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| -> String {
        error
            .and_then(|e| e.get(name))
            .map(|v| match v {
                serde_json::Value::String(s) => s.to_ascii_lowercase(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    let (code, kind, message) = (field("code"), field("type"), field("message"));

    // 1. Codes and types.
    match code.as_str() {
        "invalid_api_key"
        | "insufficient_quota"
        | "invalid_subscription_key"
        | "account_deactivated"
        | "billing_hard_limit_reached" => return FailureClass::Credential,
        "context_length_exceeded" | "string_above_max_length" => return FailureClass::ContextTooLong,
        "model_not_found" | "deploymentnotfound" | "deployment_not_found" => return FailureClass::ModelNotFound,
        "content_filter" | "content_policy_violation" | "responsibleaipolicyviolation" => {
            return FailureClass::ContentFilter;
        }
        "rate_limit_exceeded" | "requests" | "tokens" => return FailureClass::RateLimited,
        _ => {}
    }
    match kind.as_str() {
        "insufficient_quota" | "authentication_error" => return FailureClass::Credential,
        "server_error" | "overloaded_error" | "api_error" if status >= 500 => return FailureClass::Transient,
        _ => {}
    }
    // 2. Status.
    match status {
        401 | 402 => return FailureClass::Credential,
        // Azure answers 403 for a wrong subscription key; elsewhere 403 is the caller's problem unless it names the key.
        403 if message.contains("key") || message.contains("subscription") => return FailureClass::Credential,
        429 => return FailureClass::RateLimited,
        408 | 409 | 500 | 502 | 503 | 504 | 520..=529 => return FailureClass::Transient,
        s if s >= 500 => return FailureClass::Transient,
        _ => {}
    }
    // 3. Message text, for OpenAI-compatible servers that send no code.
    if message.contains("maximum context length")
        || message.contains("context length")
        || message.contains("context window")
        || message.contains("too many tokens")
    {
        return FailureClass::ContextTooLong;
    }
    if status == 404 && (message.contains("model") || message.contains("deployment")) {
        return FailureClass::ModelNotFound;
    }
    if message.contains("content management policy") || message.contains("content filter") {
        return FailureClass::ContentFilter;
    }
    FailureClass::CallerFault
}

/// The longest wait an upstream's Retry-After can impose (a cooldown of one key or target); larger values are cut to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Retry-After as seconds (`Retry-After`) or milliseconds (`retry-after-ms`, sent by OpenAI and Azure), at most
/// [`MAX_RETRY_AFTER`]. Values from a hostile or broken upstream (huge, negative, fractional, NaN, dates far away) never
/// panic: huge ones are capped, meaningless ones ignored.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let header = |name| headers.get(name).and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok()).map(str::trim);
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()).and_then(|ms| seconds(ms / 1000.0)) {
        return Some(ms);
    }
    let value = header(reqwest::header::RETRY_AFTER.as_str())?;
    if let Ok(secs) = value.parse::<f64>() {
        return seconds(secs);
    }
    // HTTP-date form.
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc).signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER))
}

fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0)
        .then(|| Duration::try_from_secs_f64(secs).unwrap_or(MAX_RETRY_AFTER).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(status: u16, body: serde_json::Value) -> FailureClass {
        classify_response(status, body.to_string().as_bytes())
    }

    fn err(code: serde_json::Value, kind: &str, message: &str) -> serde_json::Value {
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
    }

    #[test]
    fn openai_errors() {
        use FailureClass::*;
        let cases = [
            (401, err(json!("invalid_api_key"), "invalid_request_error", "Incorrect API key provided"), Credential),
            (
                429,
                err(json!("insufficient_quota"), "insufficient_quota", "You exceeded your current quota"),
                Credential,
            ),
            (402, json!({}), Credential),
            (
                400,
                err(json!("context_length_exceeded"), "invalid_request_error", "maximum context length is 8192"),
                ContextTooLong,
            ),
            (
                400,
                err(json!(null), "invalid_request_error", "This model's maximum context length is 4096 tokens."),
                ContextTooLong,
            ),
            (
                404,
                err(json!("model_not_found"), "invalid_request_error", "The model `x` does not exist"),
                ModelNotFound,
            ),
            (400, err(json!("content_filter"), "invalid_request_error", "filtered"), ContentFilter),
            (429, err(json!("rate_limit_exceeded"), "requests", "Rate limit reached"), RateLimited),
            (429, json!("not json"), RateLimited),
            (500, err(json!(null), "server_error", "The server had an error"), Transient),
            (502, json!(null), Transient),
            (503, err(json!(null), "server_error", "overloaded"), Transient),
            (529, json!(null), Transient),
            (400, err(json!(null), "invalid_request_error", "Invalid value for 'temperature'"), CallerFault),
            (422, json!({}), CallerFault),
            (413, json!({}), CallerFault),
            (404, err(json!(null), "invalid_request_error", "Invalid URL (POST /v1/chat/completionz)"), CallerFault),
        ];
        for (status, body, expected) in cases {
            assert_eq!(class(status, body.clone()), expected, "{status} {body}");
        }
    }

    #[test]
    fn azure_errors() {
        use FailureClass::*;
        let denied = json!({"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint."}});
        assert_eq!(class(401, denied), Credential);
        let forbidden = json!({"error": {"code": "403", "message": "Access denied due to invalid subscription key"}});
        assert_eq!(class(403, forbidden), Credential);
        let missing = json!({"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist."}});
        assert_eq!(class(404, missing), ModelNotFound);
        let filtered = json!({"error": {"code": "content_filter", "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy."}});
        assert_eq!(class(400, filtered), ContentFilter);
        assert_eq!(class(403, json!({"error": {"message": "Forbidden"}})), CallerFault);
    }

    #[test]
    fn retry_after_forms() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after", "0.5".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(500)));
        h.insert("retry-after-ms", "120".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(120)));
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn absurd_retry_after_values_are_capped_or_ignored() {
        let one = |name: &str, value: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
            retry_after(&h)
        };
        for huge in ["1e20", "1e19", "1e13", "18446744073709551615", "1e308", "3601"] {
            assert_eq!(one("retry-after", huge), Some(MAX_RETRY_AFTER), "{huge}");
        }
        assert_eq!(one("retry-after-ms", "1e20"), Some(MAX_RETRY_AFTER));
        assert_eq!(one("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"), Some(MAX_RETRY_AFTER));
        for junk in ["-1", "NaN", "inf", "-inf", "1e400", "0x10", ""] {
            assert_eq!(one("retry-after", junk), None, "{junk}");
        }
        assert_eq!(one("retry-after", "1e400"), None, "overflows f64 to inf");
    }

    use proptest::prelude::Strategy as _;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Whatever an upstream sends, the parser returns at most the cap and never panics.
        #[test]
        fn retry_after_never_panics(
            secs in proptest::prop_oneof![
                proptest::num::f64::ANY.prop_map(|f| f.to_string()),
                proptest::num::u64::ANY.prop_map(|n| n.to_string()),
                proptest::num::i64::ANY.prop_map(|n| n.to_string()),
                "[ -~]{0,40}",
            ],
            ms in proptest::option::of(proptest::num::f64::ANY.prop_map(|f| format!("{f:e}"))),
        ) {
            let mut h = reqwest::header::HeaderMap::new();
            if let Ok(v) = secs.parse() {
                h.insert("retry-after", v);
            }
            if let Some(Ok(v)) = ms.map(|m| m.parse()) {
                h.insert("retry-after-ms", v);
            }
            if let Some(wait) = retry_after(&h) {
                proptest::prop_assert!(wait <= MAX_RETRY_AFTER);
            }
        }
    }
}
