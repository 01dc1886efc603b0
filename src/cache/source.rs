//! The cache as the engine's "answer from elsewhere": lookups on total failure, overload, busy or cache-first, and
//! write-through of every answer an upstream gave.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::embed::EmbedError;
use super::{CacheError, Conversation, MAX_RESPONSE_BYTES, Scope, SemanticCache, WriteJob};
use crate::engine::Endpoint;
use crate::engine::events::RequestOutcome;
use crate::engine::substitute::{AnswerSource, Ask, AskReason, BoxFuture, Completion, Substitute, SubstituteSource};

/// How long a lookup may take before the request goes on without it: short where an upstream call still follows.
fn budget(reason: AskReason) -> Duration {
    match reason {
        AskReason::Busy | AskReason::CacheFirst => Duration::from_millis(300),
        AskReason::AllFailed | AskReason::Overloaded => Duration::from_secs(2),
    }
}

/// How long the same conversation is not queued again for write-through (its answer is already being stored).
pub(super) const RECENT_FOR: Duration = Duration::from_secs(60);

impl AnswerSource for SemanticCache {
    fn lookup<'a>(&'a self, ask: Ask<'a>) -> BoxFuture<'a, Option<Substitute>> {
        Box::pin(async move {
            if ask.endpoint == Endpoint::Embeddings {
                return None;
            }
            let conversation = match ask.endpoint {
                Endpoint::Responses => Conversation::from_responses_request(ask.body),
                _ => Conversation::from_request(ask.body),
            }
            .ok()?;
            let scope = Scope { key_set_id: ask.key_set_id, instance: ask.instance };
            let hit = match tokio::time::timeout(
                budget(ask.reason),
                self.lookup(scope, &conversation, ask.policy.cache_matching()),
            )
            .await
            {
                Ok(Ok(hit)) => hit?,
                // Every embedding slot taken: expected under overload, counted (`busy`), not worth a warning each.
                Ok(Err(CacheError::Embed(EmbedError::Busy))) => return None,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cache lookup failed");
                    return None;
                }
                Err(_) => {
                    self.metrics.cache_lookup("timeout");
                    return None;
                }
            };
            let requested = ask.body.get("model").and_then(|m| m.as_str()).unwrap_or_default();
            Some(Substitute {
                text: hit.response,
                model: hit.model.unwrap_or_else(|| requested.to_owned()),
                source: SubstituteSource::Cache { similarity: hit.similarity, overload: ask.reason.overload() },
            })
        })
    }

    fn completed(&self, done: Completion) {
        let from_upstream =
            matches!(done.outcome, RequestOutcome::Success | RequestOutcome::FallbackSuccess | RequestOutcome::Rescued);
        if done.endpoint == Endpoint::Embeddings
            || !from_upstream
            || done.text.is_empty()
            || done.text.len() > MAX_RESPONSE_BYTES
        {
            return;
        }
        let conversation = match done.endpoint {
            Endpoint::Responses => Conversation::from_responses_request(done.request.body()),
            _ => Conversation::from_request(done.request.body()),
        };
        let Ok(conversation) = conversation else { return };
        if !self.first_in_a_while(&done, &conversation) {
            return;
        }
        self.store_later(WriteJob {
            key_set_id: done.key_set_id,
            instance: done.instance,
            conversation,
            response: done.text,
            model: Some(done.model),
            retention: done.set.policy.cache_retention(),
        });
    }
}

impl SemanticCache {
    /// False when the same conversation of the same instance was queued less than [`RECENT_FOR`] ago: repeated
    /// questions (the common case under load) cost one map lookup instead of an embedding and a write.
    fn first_in_a_while(&self, done: &Completion, conversation: &Conversation) -> bool {
        static HASHER: OnceLock<RandomState> = OnceLock::new();
        let key = HASHER.get_or_init(RandomState::new).hash_one((
            done.key_set_id,
            &done.instance,
            &conversation.context,
            &conversation.question,
        ));
        let now = Instant::now();
        let mut recent = self.recent.lock();
        if recent.get_mut(&key, now).is_some() {
            return false;
        }
        *recent.get_or_insert_with(key, now, || now + RECENT_FOR) = now + RECENT_FOR;
        true
    }
}
