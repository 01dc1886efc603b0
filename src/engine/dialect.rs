//! Calls to Anthropic and Gemini. The chat completions request is translated on the way out ([`super::translate`]);
//! the answer, every stream event and every error on the way back, so the rest of the engine (fallback, rotation,
//! breakers, context upgrades, stream rescue, usage) sees OpenAI chat completions only.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::web::Bytes;
use serde_json::{Value, json};

use super::classify::FailureClass;
use super::plan::{ProviderKind, Step};
use super::translate::anthropic::{AnthropicStream, anthropic_request, anthropic_response, classify_anthropic};
use super::translate::gemini::{GeminiStream, classify_gemini, gemini_request, gemini_response};
use super::translate::{Malformed, StreamStatus, Unsupported};
use super::upstream::{AttemptFailure, SseEvent};

/// Anthropic's API version header (`anthropic-version`).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// One translated call: what its answer needs to be turned back into a chat completion.
#[derive(Debug)]
pub struct Translation {
    provider: ProviderKind,
    /// The model that answers (the step's), named in the translated answer.
    model: String,
    id: String,
    created: u64,
    include_usage: bool,
}

impl Translation {
    /// Translates the chat completions `body` for `step`. `Err`: the request has something the provider has no
    /// equivalent for (a 400 naming the field, returned to the client as the answer) or is not JSON.
    pub fn request(
        step: &Step,
        body: &[u8],
        stream: bool,
        default_max_tokens: u32,
    ) -> Result<(Self, Bytes), AttemptFailure> {
        let chat: Value = serde_json::from_slice(body).map_err(|_| {
            let u = Unsupported { param: String::new(), message: "the request body must be a JSON object".into() };
            refusal(step.provider, &u)
        })?;
        let translated = match step.provider {
            ProviderKind::Anthropic => anthropic_request(&chat, &step.model, default_max_tokens, stream),
            _ => gemini_request(&chat, stream),
        }
        .map_err(|u| refusal(step.provider, &u))?;
        let include_usage = chat.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let translation = Self {
            provider: step.provider,
            model: step.model.clone(),
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created,
            include_usage,
        };
        Ok((translation, Bytes::from(translated)))
    }

    /// A JSON answer as a `chat.completion`.
    pub fn answer(&self, body: &[u8]) -> Result<Bytes, AttemptFailure> {
        let translated = match self.provider {
            ProviderKind::Anthropic => anthropic_response(body, &self.model, &self.id, self.created),
            _ => gemini_response(body, &self.model, &self.id, self.created),
        };
        translated.map(Bytes::from).map_err(|m| not_understood(self.provider, &m))
    }

    /// The stream translator for this call's events.
    pub fn stream(&self) -> StreamTranslator {
        match self.provider {
            ProviderKind::Anthropic => StreamTranslator::Anthropic(AnthropicStream::new(
                &self.model,
                &self.id,
                self.created,
                self.include_usage,
            )),
            _ => StreamTranslator::Gemini(GeminiStream::new(&self.model, &self.id, self.created, self.include_usage)),
        }
    }

    /// An error answer: its class, the body the client gets if it is returned (caller faults, context errors) in
    /// OpenAI's error shape, the provider's own type or status as `code`, and the wait the body asks for (Gemini's
    /// `RetryInfo.retryDelay`; Anthropic's is the `retry-after` header, read by the caller).
    pub fn error(&self, status: u16, body: &[u8]) -> (FailureClass, Bytes, Option<Duration>) {
        let mut wait = None;
        let (class, kind, message) = match self.provider {
            ProviderKind::Anthropic => {
                let error = serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("error").cloned());
                let field =
                    |name: &str| error.as_ref().and_then(|e| e.get(name)).and_then(Value::as_str).map(str::to_owned);
                (classify_anthropic(status, body), field("type"), field("message"))
            }
            _ => {
                let parsed: Value = serde_json::from_slice(body).unwrap_or_default();
                let error = match &parsed {
                    Value::Array(items) => items.first().and_then(|i| i.get("error")),
                    other => other.get("error"),
                };
                let field = |name: &str| error.and_then(|e| e.get(name)).and_then(Value::as_str).map(str::to_owned);
                wait = error.and_then(retry_delay);
                (classify_gemini(status, body), field("status"), field("message"))
            }
        };
        let code = match class {
            FailureClass::ContextTooLong => Some("context_length_exceeded".to_owned()),
            _ => kind,
        };
        let message = message.unwrap_or_else(|| format!("{} answered HTTP {status}", name(self.provider)));
        (class, openai_error(status, &message, None, code.as_deref()), wait)
    }
}

/// Gemini's `RetryInfo` detail (`"retryDelay": "30s"`, or with a fraction: `"1.5s"`), at most an hour.
fn retry_delay(error: &Value) -> Option<Duration> {
    let delay = error.get("details")?.as_array()?.iter().find_map(|d| d.get("retryDelay")?.as_str())?;
    let seconds: f64 = delay.strip_suffix('s')?.parse().ok()?;
    (seconds.is_finite() && (0.0..=3600.0).contains(&seconds)).then(|| Duration::from_secs_f64(seconds))
}

/// Provider stream events → `chat.completion.chunk` events.
#[derive(Debug)]
pub enum StreamTranslator {
    Anthropic(AnthropicStream),
    Gemini(GeminiStream),
}

impl StreamTranslator {
    /// Appends the chat events `event` stands for to `out`.
    pub fn event(&mut self, event: &SseEvent, out: &mut Vec<u8>) -> Result<StreamStatus, Malformed> {
        let data = event.data.trim();
        if data.is_empty() {
            // A comment or keep-alive: nothing to say.
            return Ok(StreamStatus::Continue);
        }
        match self {
            Self::Anthropic(s) => s.event(None, data, out),
            Self::Gemini(s) => s.event(data, out),
        }
    }
}

/// The chat `{"error": …}` event a provider's in-band stream error becomes (the stream then ends without `[DONE]`).
pub fn stream_error_event(class: FailureClass, message: &str) -> Bytes {
    let body = json!({"error": {"message": message, "type": "server_error", "param": null, "code": class.as_str()}});
    Bytes::from(format!("data: {body}\n\n"))
}

fn name(provider: ProviderKind) -> &'static str {
    match provider {
        ProviderKind::Anthropic => "Anthropic",
        _ => "Gemini",
    }
}

fn openai_error(status: u16, message: &str, param: Option<&str>, code: Option<&str>) -> Bytes {
    let kind = if status >= 500 { "server_error" } else { "invalid_request_error" };
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    Bytes::from(body.to_string())
}

/// A request the provider cannot take: a final 400 naming the field, never a silent drop.
fn refusal(provider: ProviderKind, u: &Unsupported) -> AttemptFailure {
    let message = format!("{} ({} cannot serve this request)", u.message, name(provider));
    let param = (!u.param.is_empty()).then_some(u.param.as_str());
    AttemptFailure {
        class: FailureClass::CallerFault,
        status: Some(400),
        body: Some(openai_error(400, &message, param, Some("unsupported_parameter"))),
        retry_after: None,
        detail: format!("not translatable to {} (`{}`)", name(provider), u.param),
    }
}

/// An answer that is not what the provider documents: another attempt may do better.
fn not_understood(provider: ProviderKind, m: &Malformed) -> AttemptFailure {
    AttemptFailure {
        class: FailureClass::Transient,
        status: None,
        body: None,
        retry_after: None,
        detail: format!("{} answer not understood: {}", name(provider), m.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_retry_delays_are_read_and_bounded() {
        let error = |delay: &str| {
            json!({"details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]})
        };
        assert_eq!(retry_delay(&error("30s")), Some(Duration::from_secs(30)));
        assert_eq!(retry_delay(&error("1.5s")), Some(Duration::from_millis(1500)));
        for bad in ["-1s", "7200s", "NaNs", "30", "", "infs"] {
            assert_eq!(retry_delay(&error(bad)), None, "{bad}");
        }
        assert_eq!(retry_delay(&json!({"code": 429})), None);
    }
}
