//! One gateway request as the engine sees it (parsed at the edge), and the bodies sent upstream for it.

use std::sync::OnceLock;
use std::time::Duration;

use actix_web::web::Bytes;
use serde_json::{Value, json};

use super::plan::Endpoint;
use super::upstream::Wire;

/// The customer instance of requests that name none.
pub const DEFAULT_INSTANCE: &str = "default";

/// Instance ids: 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn valid_instance(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// One gateway request, parsed at the edge.
#[derive(Debug)]
pub struct GatewayRequest {
    pub endpoint: Endpoint,
    /// The client's body as a tree ([`GatewayRequest::body`]): built from `raw` the first time something needs it (a
    /// fallback's `model`, stream rescue, the cache), so a request answered by its own model never builds it.
    pub(crate) tree: OnceLock<Value>,
    /// Pre-flight prompt token estimate, computed on first use (fallback fits, policy budgets).
    pub(crate) estimate: OnceLock<u32>,
    /// The body as received: sent byte for byte while the model is the requested one.
    pub raw: Bytes,
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage` is true: the client asked for the final usage chunk.
    pub include_usage: bool,
    pub fallbacks: Option<Vec<String>>,
    /// Customer instance (`x-reliablegpt-instance`), [`DEFAULT_INSTANCE`] when absent.
    pub instance: String,
    pub timeout: Option<Duration>,
    /// Overrides the policy's `hedge_ms` (`x-reliablegpt-hedge-ms`).
    pub hedge: Option<Duration>,
    /// Overrides the policy's `caching` (`x-reliablegpt-caching`).
    pub caching: Option<bool>,
    /// Only this provider key may serve the request (Responses continuing a response stored under its account).
    pub pinned_key: Option<uuid::Uuid>,
    /// A `multipart/form-data` body (transcriptions): `raw` is the form, the tree holds only its `model`.
    pub form: Option<Form>,
}

/// What the engine keeps of a form upload.
#[derive(Debug, Clone)]
pub struct Form {
    /// The client's Content-Type, boundary included, sent upstream as it is.
    pub content_type: String,
    /// Where the `model` part's value lies in the raw body.
    pub model: std::ops::Range<usize>,
}

impl GatewayRequest {
    /// A request with no optional headers.
    pub fn new(endpoint: Endpoint, body: Value) -> Self {
        let model = body.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        Self {
            endpoint,
            raw: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
            include_usage: include_usage(&body),
            tree: OnceLock::from(body),
            estimate: OnceLock::new(),
            model,
            stream,
            fallbacks: None,
            instance: DEFAULT_INSTANCE.to_owned(),
            timeout: None,
            hedge: None,
            caching: None,
            pinned_key: None,
            form: None,
        }
    }

    /// The client's body as a tree: the one given at the edge, else parsed from `raw` now (the edge checked that it
    /// parses; `null` if it somehow does not).
    pub fn body(&self) -> &Value {
        self.tree.get_or_init(|| serde_json::from_slice(&self.raw).unwrap_or(Value::Null))
    }

    /// The tree the edge already has (a body it changed, or a form's fields), instead of parsing `raw` later.
    pub fn with_body(self, body: Value) -> Self {
        let _ = self.tree.set(body);
        self
    }

    /// Pre-flight prompt token estimate of the body (see [`super::catalog::estimate_prompt_tokens`]).
    pub fn prompt_estimate(&self) -> u32 {
        *self.estimate.get_or_init(|| super::catalog::estimate_prompt_tokens(self.body()))
    }

    /// How the upstream's answer is read.
    pub fn wire(&self) -> Wire {
        match self.endpoint {
            Endpoint::Speech => Wire::Bytes,
            Endpoint::Transcriptions => Wire::SlowBytes,
            Endpoint::ImageGenerations => Wire::SlowJson,
            _ if self.stream => Wire::Sse,
            _ => Wire::Json,
        }
    }

    /// The body for `model`: the client's bytes untouched when it is the requested model.
    pub(super) fn body_for(&self, model: &str) -> Bytes {
        if model == self.model {
            return self.raw.clone();
        }
        match &self.form {
            Some(form) => super::multipart::replace(&self.raw, form.model.clone(), model),
            None => body_with(self.body(), model, None),
        }
    }

    /// The Content-Type of the body sent upstream.
    pub(super) fn content_type(&self) -> &str {
        self.form.as_ref().map_or("application/json", |f| f.content_type.as_str())
    }
}

/// `stream_options.include_usage` is true in this body (or in the top-level fields the edge kept of it).
pub fn include_usage(body: &Value) -> bool {
    body.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true)
}

/// How a stream that broke midway is continued on another target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuation<'a> {
    /// The partial answer as a final assistant message (or, for legacy completions, appended to the prompt).
    Prefill(&'a str),
    /// For models that refuse a prefill: a user turn quoting the partial answer and asking to go on exactly there.
    Instruction(&'a str),
}

/// The user turn of [`Continuation::Instruction`].
pub fn continuation_instruction(partial: &str) -> String {
    format!(
        "Your previous answer was cut off. This is exactly what you had written so far:\n\n<partial_answer>\n{partial}\n\
         </partial_answer>\n\nContinue from exactly where it stops. Do not repeat any of it and add no preamble: reply \
         with only the missing rest."
    )
}

/// The client's body with `model` set and, for a continuation, the partial answer added and usage requested (the
/// engine needs the continuation's token counts to report honest usage for the whole answer).
pub(super) fn body_with(body: &Value, model: &str, continuation: Option<Continuation<'_>>) -> Bytes {
    let mut body = body.clone();
    if let Some(map) = body.as_object_mut() {
        map.insert("model".to_owned(), Value::String(model.to_owned()));
        if let Some(continuation) = continuation {
            if map.contains_key("stream_options") || map.get("stream") == Some(&Value::Bool(true)) {
                map.insert("stream_options".to_owned(), json!({"include_usage": true}));
            }
            let partial = match continuation {
                Continuation::Prefill(text) | Continuation::Instruction(text) => text,
            };
            if let Some(Value::Array(messages)) = map.get_mut("messages") {
                match continuation {
                    Continuation::Prefill(_) => messages.push(json!({"role": "assistant", "content": partial})),
                    Continuation::Instruction(_) => {
                        messages.push(json!({"role": "user", "content": continuation_instruction(partial)}));
                    }
                }
            } else if let Some(Value::String(prompt)) = map.get_mut("prompt") {
                prompt.push_str(partial);
            }
        }
    }
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids() {
        assert!(valid_instance("shop-42:eu.1_a"));
        assert!(valid_instance(&"a".repeat(128)));
        for bad in ["", "has space", "é", &"a".repeat(129), "a/b"] {
            assert!(!valid_instance(bad), "{bad:?}");
        }
    }

    #[test]
    fn continuation_bodies() {
        let chat = json!({"model": "a", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let body: Value = serde_json::from_slice(&body_with(&chat, "b", Some(Continuation::Prefill("par")))).unwrap();
        assert_eq!(body["model"], "b");
        assert_eq!(body["messages"][1], json!({"role": "assistant", "content": "par"}));
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
        let body: Value =
            serde_json::from_slice(&body_with(&chat, "b", Some(Continuation::Instruction("par")))).unwrap();
        assert_eq!(body["messages"][1]["role"], "user");
        assert!(body["messages"][1]["content"].as_str().unwrap().contains("<partial_answer>\npar\n</partial_answer>"));
        let legacy = json!({"model": "a", "prompt": "Say: "});
        let body: Value =
            serde_json::from_slice(&body_with(&legacy, "b", Some(Continuation::Instruction("x y")))).unwrap();
        assert_eq!(body["prompt"], "Say: x y");
        assert!(body.get("stream_options").is_none(), "non-streaming bodies are not given stream options");
        let plain: Value = serde_json::from_slice(&body_with(&chat, "b", None)).unwrap();
        assert!(plain.get("stream_options").is_none(), "only continuations ask for usage");
    }
}
