//! When every target has failed: the original context error, the policy's graceful answer, or an OpenAI-style error
//! with the most meaningful status and a list of every attempt.

use serde_json::{Value, json};
use uuid::Uuid;

use super::events::RequestOutcome;
use super::{Endpoint, Engine, FailureClass, GatewayRequest, ProviderKind, Reply, Run, Served};
use crate::vault::OpenKeySet;

impl Engine {
    pub(super) fn total_failure(&self, set: &OpenKeySet, req: &GatewayRequest, run: Run, deadline_hit: bool) -> Reply {
        if let Some((status, body)) = run.context_error.clone()
            && run.failures.iter().all(|(c, _)| matches!(c, FailureClass::ContextTooLong | FailureClass::ModelNotFound))
        {
            // Nothing could fit the prompt: the caller needs the original reason.
            self.metrics.request(RequestOutcome::Failed);
            let served = Served {
                model: req.model.clone(),
                provider: ProviderKind::Openai,
                attempts: run.attempts,
                fallback_reason: None,
            };
            return Reply::Upstream { status, body, served };
        }
        if let Some(text) = &set.policy.graceful_string
            && req.endpoint != Endpoint::Embeddings
        {
            self.metrics.request(RequestOutcome::Graceful);
            return Reply::Graceful { body: graceful_body(req, text), attempts: run.attempts };
        }
        self.metrics.request(RequestOutcome::Failed);
        let classes: Vec<FailureClass> = run.failures.iter().map(|(c, _)| *c).collect();
        let all = |c: FailureClass| !classes.is_empty() && classes.iter().all(|x| *x == c);
        let (status, code) = if deadline_hit {
            (504, "deadline_exceeded")
        } else if classes.is_empty() {
            (503, "no_available_upstream")
        } else if all(FailureClass::RateLimited) {
            (429, "upstream_rate_limited")
        } else if all(FailureClass::Timeout) {
            (504, "upstream_timeout")
        } else if all(FailureClass::Credential) {
            (401, "upstream_credentials_invalid")
        } else if classes.contains(&FailureClass::Transient) || classes.contains(&FailureClass::RateLimited) {
            (503, "upstream_unavailable")
        } else {
            (502, "upstream_failed")
        };
        let message = if run.failures.is_empty() {
            if deadline_hit {
                "The request deadline passed before any upstream could be tried.".to_owned()
            } else {
                "No upstream could be tried: every key is invalid or cooling down, or every target's circuit breaker is open."
                    .to_owned()
            }
        } else {
            let list: Vec<&str> = run.failures.iter().map(|(_, d)| d.as_str()).collect();
            format!(
                "{}All {} upstream attempts failed: {}",
                if deadline_hit { "The request deadline passed. " } else { "" },
                run.attempts,
                list.join("; ")
            )
        };
        Reply::Failed { status, code, message, attempts: run.attempts }
    }
}

fn graceful_body(req: &GatewayRequest, text: &str) -> Value {
    let created = chrono::Utc::now().timestamp();
    let id = format!("chatcmpl-rgpt-{}", Uuid::new_v4().simple());
    match req.endpoint {
        Endpoint::Completions => json!({
            "id": id, "object": "text_completion", "created": created, "model": req.model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        }),
        _ => json!({
            "id": id, "object": "chat.completion", "created": created, "model": req.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        }),
    }
}
