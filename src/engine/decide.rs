//! What to do after a failed attempt: retry the same target, rotate to the next key, move on to the next target, or
//! hand the upstream's own answer back to the caller. Also applies the failure's consequences for the target's health
//! (breaker, invalid key, cooldown), whoever made the attempt (main loop, hedge or rescue).

use std::time::{Duration, Instant};

use rand::Rng;
use tracing::Instrument;

use super::breaker::Admission;
use super::run::{Cx, Run};
use super::select::Target;
use super::upstream::AttemptFailure;
use super::{Engine, FailureClass};

/// What the engine does after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    Retry(Duration),
    RotateKey,
    MoveOn,
    ReturnUpstream,
}

impl Engine {
    /// `retries`: retries already made on this target.
    pub(super) fn decide(
        &self,
        cx: &Cx<'_>,
        run: &mut Run,
        target: Target<'_>,
        failure: &AttemptFailure,
        retries: u32,
    ) -> Next {
        let breaker = &target.candidate.breaker;
        let can_wait = |wait: Duration| {
            retries < self.settings.max_retries
                && target.admission != Admission::Probe
                && Instant::now().checked_add(wait).is_some_and(|at| at < cx.deadline)
        };
        match failure.class {
            FailureClass::Credential => {
                self.breakers.release_probe(breaker);
                if !run.burned(target.key.id) {
                    run.burned_keys.push(target.key.id);
                }
                self.keys.mark_invalid(target.key.id);
                let (vault, set_id, key_id) = (self.vault.clone(), cx.set.key_set_id, target.key.id);
                let health = self.keys.clone();
                let reason = format!("{} ({})", failure.class.as_str(), failure.detail);
                tokio::spawn(
                    async move {
                        // The stored time is noted as soon as the write commits, before the announcement: a set
                        // read after it that calls the key active was revived by its owner (an owner can see the
                        // mark and revive the key while the announcement is still on its way).
                        match vault.write_key_invalid(set_id, key_id, &reason).await {
                            Ok(marked) => {
                                health.stored(key_id);
                                // Then every replica drops its cached copy of the set and reloads it with the mark.
                                if marked && let Err(e) = vault.announce_change(set_id).await {
                                    tracing::warn!(error = %e, "could not announce a key's invalid mark");
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "could not mark a key invalid"),
                        }
                    }
                    .in_current_span(),
                );
                Next::RotateKey
            }
            FailureClass::Transient => {
                self.breakers.record_failure(breaker);
                let wait = self.backoff(retries);
                if can_wait(wait) { Next::Retry(wait) } else { Next::MoveOn }
            }
            FailureClass::RateLimited => match failure.retry_after {
                Some(wait) if wait <= self.settings.retry_after_cap && can_wait(wait) => Next::Retry(wait),
                other => {
                    let cool = other.unwrap_or(self.settings.rate_limit_cooldown);
                    self.breakers.open_for(breaker, cool);
                    // Stored by one background writer, coalesced per key: a storm of 429s is not a storm of tasks.
                    let until = chrono::Utc::now() + chrono::Duration::from_std(cool).unwrap_or_default();
                    self.cooldowns.record(breaker, until);
                    Next::MoveOn
                }
            },
            FailureClass::Timeout => {
                self.breakers.record_failure(breaker);
                Next::MoveOn
            }
            FailureClass::ContextTooLong => {
                self.breakers.release_probe(breaker);
                run.context_floor = Some(self.catalog.context_window(&target.step.model).unwrap_or(0));
                if run.context_error.is_none() {
                    run.context_error = Some((failure.status.unwrap_or(400), failure.body.clone().unwrap_or_default()));
                }
                Next::MoveOn
            }
            FailureClass::ModelNotFound | FailureClass::BreakerOpen | FailureClass::Refused => {
                self.breakers.release_probe(breaker);
                Next::MoveOn
            }
            FailureClass::CallerFault | FailureClass::ContentFilter => {
                self.breakers.release_probe(breaker);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EngineSettings;
    use crate::engine::events::AttemptRole;
    use crate::engine::testing::{cx, engine, key_set, plan, request};
    use crate::vault::Policy;

    fn failure(class: FailureClass, retry_after: Option<Duration>) -> AttemptFailure {
        AttemptFailure { class, status: Some(500), body: None, retry_after, detail: "test".into() }
    }

    #[tokio::test]
    async fn each_class_gets_its_decision_and_its_health_consequence() {
        let e = engine(EngineSettings { max_retries: 2, breaker_failures: 3, ..EngineSettings::default() });
        let (set, req) = (key_set(2, Policy::default()), request("gpt-4o"));
        let p = plan(&e, &set, &req);
        let cx = cx(&set, &req);
        let mut run = Run::default();
        let target = e.select(&cx, &p, &run, 0, AttemptRole::Main).target.unwrap();

        let transient = failure(FailureClass::Transient, None);
        assert!(matches!(e.decide(&cx, &mut run, target, &transient, 0), Next::Retry(_)));
        assert!(matches!(e.decide(&cx, &mut run, target, &transient, 1), Next::Retry(_)));
        assert_eq!(e.decide(&cx, &mut run, target, &transient, 2), Next::MoveOn, "retries are bounded");
        assert_eq!(e.breakers.admit(&target.candidate.breaker), Admission::Rejected, "three failures opened it");

        let limited = failure(FailureClass::RateLimited, Some(Duration::from_millis(50)));
        assert_eq!(e.decide(&cx, &mut run, target, &limited, 0), Next::Retry(Duration::from_millis(50)));
        let long = failure(FailureClass::RateLimited, Some(Duration::from_secs(3_600)));
        assert_eq!(e.decide(&cx, &mut run, target, &long, 0), Next::MoveOn);

        let context = failure(FailureClass::ContextTooLong, None);
        assert_eq!(e.decide(&cx, &mut run, target, &context, 0), Next::MoveOn);
        assert_eq!(run.context_floor, Some(128_000));
        for class in [FailureClass::CallerFault, FailureClass::ContentFilter] {
            assert_eq!(e.decide(&cx, &mut run, target, &failure(class, None), 0), Next::ReturnUpstream);
        }
        assert_eq!(e.decide(&cx, &mut run, target, &failure(FailureClass::Credential, None), 0), Next::RotateKey);
        assert!(run.burned(target.key.id));
    }

    #[tokio::test]
    async fn a_half_open_probe_is_never_retried() {
        let e =
            engine(EngineSettings { breaker_failures: 1, breaker_open: Duration::ZERO, ..EngineSettings::default() });
        let (set, req) = (key_set(1, Policy::default()), request("gpt-4o"));
        let p = plan(&e, &set, &req);
        let cx = cx(&set, &req);
        let mut run = Run::default();
        e.breakers.record_failure(&p.candidates[0].breaker);
        let probe = e.select(&cx, &p, &run, 0, AttemptRole::Main).target.unwrap();
        assert_eq!(probe.admission, Admission::Probe);
        assert_eq!(e.decide(&cx, &mut run, probe, &failure(FailureClass::Transient, None), 0), Next::MoveOn);
    }
}
