//! Answers that do not come from an upstream: the "answer from elsewhere" step of the outcome chain (the semantic cache
//! implements [`AnswerSource`]) and the policy's `graceful_string`. Both reach the client as a normal completion, JSON
//! or a proper SSE stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::web::Bytes;
use serde_json::{Value, json};
use uuid::Uuid;

use super::events::{RequestOutcome, Usage};
use super::plan::Endpoint;
use super::request::GatewayRequest;
use crate::vault::{OpenKeySet, Policy};

/// Why the engine asks for an answer from elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskReason {
    /// Every upstream target failed.
    AllFailed,
    /// The key set is over its `max_concurrency` and its queue limit: the alternative is a 503.
    Overloaded,
    /// The key set is busy (at least [`BUSY_LOAD`] of `max_concurrency` in flight): a hit spares an upstream call.
    Busy,
    /// The policy's `cache_first`: a hit is served before any upstream call.
    CacheFirst,
}

impl AskReason {
    /// Whether the answer stands in for an overloaded service (`x-reliablegpt-cache: overload-hit`).
    pub fn overload(self) -> bool {
        matches!(self, Self::Overloaded | Self::Busy)
    }
}

/// Load ratio (in flight / `max_concurrency`) from which a request may be answered from elsewhere before any upstream.
pub const BUSY_LOAD: f32 = 0.8;

/// What the engine asks an [`AnswerSource`].
#[derive(Debug)]
pub struct Ask<'a> {
    pub key_set_id: Uuid,
    pub instance: &'a str,
    pub endpoint: Endpoint,
    /// The client's request body (model, messages or prompt, …).
    pub body: &'a Value,
    /// The key set's policy (the cache's threshold and guards).
    pub policy: &'a Policy,
    pub reason: AskReason,
    /// In flight / `max_concurrency` for this key set (0 without a limit).
    pub load: f32,
}

/// An answer from elsewhere.
#[derive(Debug, Clone)]
pub struct Substitute {
    pub text: String,
    /// The model the answer is attributed to.
    pub model: String,
    pub source: SubstituteSource,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SubstituteSource {
    Graceful,
    Cache { similarity: f32, overload: bool },
}

impl SubstituteSource {
    pub fn outcome(self) -> RequestOutcome {
        match self {
            Self::Graceful => RequestOutcome::Graceful,
            Self::Cache { .. } => RequestOutcome::Cached,
        }
    }
}

/// How an answered request ended, for write-through (seen once per request, off the request path).
#[derive(Debug, Clone)]
pub struct Completion {
    pub key_set_id: Uuid,
    pub instance: String,
    pub endpoint: Endpoint,
    /// The client's request (its body is what the cache keys on).
    pub request: Arc<GatewayRequest>,
    /// The key set's opened state (its policy says how long and how much the cache keeps).
    pub set: Arc<OpenKeySet>,
    pub outcome: RequestOutcome,
    /// The model that answered.
    pub model: String,
    /// The whole answer text the client received (for streams: across a rescue).
    pub text: String,
    pub usage: Option<Usage>,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Somewhere other than an upstream that may answer a request (the semantic cache).
pub trait AnswerSource: Send + Sync + 'static {
    /// An answer for this request, if there is one.
    fn lookup<'a>(&'a self, ask: Ask<'a>) -> BoxFuture<'a, Option<Substitute>>;

    /// Sees every request an upstream answered completely, when the key set has caching on. Must not block: queue
    /// the work.
    fn completed(&self, _completion: Completion) {}
}

/// Used until the semantic cache exists: never has an answer.
pub struct NoAnswers;

impl AnswerSource for NoAnswers {
    fn lookup<'a>(&'a self, _ask: Ask<'a>) -> BoxFuture<'a, Option<Substitute>> {
        Box::pin(std::future::ready(None))
    }
}

/// The substitute as the client's endpoint would have answered: a chat completion or a legacy completion, JSON or SSE.
pub fn render(endpoint: Endpoint, stream: bool, answer: &Substitute) -> Bytes {
    if endpoint == Endpoint::Responses {
        return super::responses::render(stream, answer);
    }
    let created = chrono::Utc::now().timestamp();
    let id = format!("chatcmpl-rgpt-{}", Uuid::new_v4().simple());
    let (model, text) = (answer.model.as_str(), answer.text.as_str());
    let legacy = endpoint == Endpoint::Completions;
    if !stream {
        let body = if legacy {
            json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            })
        } else {
            json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                             "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            })
        };
        return Bytes::from(body.to_string());
    }
    let chunk = |content: Option<&str>, finish: Value| -> Value {
        if legacy {
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": 0, "text": content.unwrap_or(""), "logprobs": null, "finish_reason": finish}]})
        } else {
            let delta = content.map_or_else(|| json!({}), |c| json!({"role": "assistant", "content": c}));
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        }
    };
    Bytes::from(format!(
        "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        chunk(Some(text), Value::Null),
        chunk(None, json!("stop"))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Substitute {
        Substitute { text: "Back soon.".into(), model: "gpt-4o".into(), source: SubstituteSource::Graceful }
    }

    #[test]
    fn json_and_sse_renderings() {
        let body: Value = serde_json::from_slice(&render(Endpoint::Chat, false, &answer())).unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["message"]["content"], "Back soon.");
        let body: Value = serde_json::from_slice(&render(Endpoint::Completions, false, &answer())).unwrap();
        assert_eq!(body["choices"][0]["text"], "Back soon.");

        let sse = String::from_utf8(render(Endpoint::Chat, true, &answer()).to_vec()).unwrap();
        let events: Vec<&str> = sse.split_terminator("\n\n").map(|e| e.trim_start_matches("data: ")).collect();
        assert_eq!(events.len(), 3);
        let first: Value = serde_json::from_str(events[0]).unwrap();
        assert_eq!(first["choices"][0]["delta"]["content"], "Back soon.");
        let last: Value = serde_json::from_str(events[1]).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(last["id"], first["id"]);
        assert_eq!(events[2], "[DONE]");
        let sse = String::from_utf8(render(Endpoint::Completions, true, &answer()).to_vec()).unwrap();
        assert!(sse.contains("\"text\":\"Back soon.\""), "{sse}");
    }

    #[tokio::test]
    async fn no_answers_has_none() {
        let body = json!({});
        let policy = Policy::default();
        let ask = Ask {
            key_set_id: Uuid::nil(),
            instance: "default",
            endpoint: Endpoint::Chat,
            body: &body,
            policy: &policy,
            reason: AskReason::AllFailed,
            load: 0.0,
        };
        assert!(NoAnswers.lookup(ask).await.is_none());
    }
}
