//! What to do after a failed attempt: retry the same target, rotate to the next key, move on to the next target, or
//! hand the upstream's own answer back to the caller.

use std::time::{Duration, Instant};

use rand::Rng;

use super::upstream::AttemptFailure;
use super::{Admission, Engine, FailureClass, Run, TargetKey};
use crate::vault::{OpenKeySet, ProviderKey};

/// What the engine does after a failed attempt.
pub(super) enum Next {
    Retry(Duration),
    RotateKey,
    MoveOn,
    ReturnUpstream,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decide(
        &self,
        set: &OpenKeySet,
        key: &ProviderKey,
        target: &TargetKey,
        admission: Admission,
        failure: &AttemptFailure,
        retries: u32,
        deadline: Instant,
        run: &mut Run,
    ) -> Next {
        let can_wait = |wait: Duration| {
            retries < self.settings.max_retries && admission != Admission::Probe && Instant::now() + wait < deadline
        };
        match failure.class {
            FailureClass::Credential => {
                self.breakers.release_probe(target);
                run.burned_keys.insert(key.id);
                self.keys.mark_invalid(key.id);
                let (vault, set_id, key_id) = (self.vault.clone(), set.key_set_id, key.id);
                let reason = format!("{} ({})", failure.class.as_str(), failure.detail);
                tokio::spawn(async move {
                    if let Err(e) = vault.mark_key_invalid(set_id, key_id, &reason).await {
                        tracing::warn!(error = %e, "could not mark a key invalid");
                    }
                    // Evict only after the write, so a reload sees the key as invalid.
                    vault.evict_cached(set_id);
                });
                Next::RotateKey
            }
            FailureClass::Transient => {
                self.breakers.record_failure(target);
                let wait = self.backoff(retries);
                if can_wait(wait) { Next::Retry(wait) } else { Next::MoveOn }
            }
            FailureClass::RateLimited => match failure.retry_after {
                Some(wait) if wait <= self.settings.retry_after_cap && can_wait(wait) => Next::Retry(wait),
                other => {
                    let cool = other.unwrap_or(self.settings.rate_limit_cooldown);
                    self.breakers.open_for(target, cool);
                    let (vault, key_id) = (self.vault.clone(), key.id);
                    let until = chrono::Utc::now() + chrono::Duration::from_std(cool).unwrap_or_default();
                    tokio::spawn(async move {
                        let _ = vault.set_cooldown(key_id, Some(until)).await;
                    });
                    Next::MoveOn
                }
            },
            FailureClass::Timeout => {
                self.breakers.record_failure(target);
                Next::MoveOn
            }
            FailureClass::ContextTooLong => {
                self.breakers.release_probe(target);
                run.context_floor = Some(self.catalog.context_window(&target.model).unwrap_or(0));
                if run.context_error.is_none() {
                    run.context_error = Some((failure.status.unwrap_or(400), failure.body.clone().unwrap_or_default()));
                }
                Next::MoveOn
            }
            FailureClass::ModelNotFound => {
                self.breakers.release_probe(target);
                Next::MoveOn
            }
            FailureClass::CallerFault | FailureClass::ContentFilter => {
                self.breakers.release_probe(target);
                Next::ReturnUpstream
            }
        }
    }

    /// Exponential backoff with full jitter.
    fn backoff(&self, retries: u32) -> Duration {
        let ceiling =
            self.settings.retry_base.saturating_mul(1u32 << retries.min(10)).min(self.settings.retry_after_cap);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::thread_rng().gen_range(0..=ms))
    }
}
