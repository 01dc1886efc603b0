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
        }
    }

    pub const ALL: [FailureClass; 9] = [
        Self::Transient,
        Self::RateLimited,
        Self::Credential,
        Self::ContextTooLong,
        Self::ModelNotFound,
        Self::Timeout,
        Self::CallerFault,
        Self::ContentFilter,
        Self::BreakerOpen,
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

/// Retry-After as seconds (`Retry-After`) or milliseconds (`retry-after-ms`, sent by OpenAI and Azure).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if let Some(ms) =
        headers.get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    // HTTP-date form.
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
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
}
