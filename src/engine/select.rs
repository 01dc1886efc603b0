//! Target selection: the one rule set that decides whether a (step, key) of the plan may be tried now. The main loop,
//! hedging and stream rescue all call [`Engine::select`].
//!
//! Rules, in order: the deadline has not passed; the prompt fits the model (catalog window, and after a context error
//! only larger windows); the key is neither burned by this request nor marked invalid; the breaker admits the target
//! (open → recorded as a `breaker_open` skip); the policy's model budget has room within the queue limit (else the rest
//! of that step is skipped as `rate_limited`). Egress was checked when the plan was built.

use std::time::{Duration, Instant};

use super::breaker::Admission;
use super::classify::FailureClass;
use super::plan::{Candidate, Plan, Step};
use super::run::{Cx, Run};
use super::{Engine, events::AttemptRole};
use crate::vault::ProviderKey;

/// A target chosen for one attempt.
#[derive(Clone, Copy)]
pub(super) struct Target<'p> {
    /// Its index in `plan.candidates`: where rotation and fallback continue from.
    pub pos: usize,
    pub step: &'p Step,
    pub key: &'p ProviderKey,
    pub candidate: &'p Candidate,
    /// `Probe`: the breaker's single half-open attempt (its outcome must be reported).
    pub admission: Admission,
    /// Wait for the model's budget before sending.
    pub pace: Duration,
}

/// A candidate that was passed over for a reason the request must account for.
pub(super) struct Skipped<'p> {
    pub step: &'p Step,
    pub key: &'p ProviderKey,
    pub class: FailureClass,
    pub detail: &'static str,
}

pub(super) struct Pick<'p> {
    pub target: Option<Target<'p>>,
    pub skipped: Vec<Skipped<'p>>,
    pub deadline_passed: bool,
}

impl Engine {
    /// The first candidate at or after `from` that every rule admits. Claims what it admits (a breaker probe, a
    /// budget reservation): the caller must attempt it or release the probe.
    pub(super) fn select<'p>(
        &self,
        cx: &Cx<'p>,
        plan: &'p Plan,
        run: &Run,
        from: usize,
        role: AttemptRole,
    ) -> Pick<'p> {
        let mut pick = Pick { target: None, skipped: Vec::new(), deadline_passed: false };
        let mut pos = from;
        while let Some(candidate) = plan.candidates.get(pos) {
            let here = pos;
            pos += 1;
            if Instant::now() >= cx.deadline {
                pick.deadline_passed = true;
                return pick;
            }
            let (Some(step), Some(key)) = (plan.steps.get(candidate.step), cx.set.keys.get(candidate.key)) else {
                continue;
            };
            if !self.fits(step, candidate.step == 0, run) {
                pos = plan.next_step(here);
                continue;
            }
            if run.burned(key.id) || !self.keys.usable(key, cx.set.loaded_at) {
                continue;
            }
            let admission = self.breakers.admit(&candidate.breaker);
            if admission == Admission::Rejected {
                pick.skipped.push(Skipped { step, key, class: FailureClass::BreakerOpen, detail: "skipped" });
                continue;
            }
            let Some(pace) = self.reserve_budget(cx, step, run) else {
                self.breakers.release_probe(&candidate.breaker);
                pick.skipped.push(Skipped {
                    step,
                    key,
                    class: FailureClass::RateLimited,
                    detail: "over its policy budget (model_limits)",
                });
                pos = plan.next_step(here);
                continue;
            };
            // Hedges are only worth it when they can start at once.
            if role == AttemptRole::Hedge && pace > Duration::ZERO {
                self.breakers.release_probe(&candidate.breaker);
                continue;
            }
            pick.target = Some(Target { pos: here, step, key, candidate, admission, pace });
            return pick;
        }
        pick
    }

    /// A fallback is skipped when the catalog says the prompt cannot fit, and after a context-length error only larger
    /// windows are tried. Unknown models are always tried, and so is the requested model: the upstream has the last
    /// word.
    fn fits(&self, step: &Step, requested: bool, run: &Run) -> bool {
        let Some(window) = self.catalog.context_window(&step.model) else { return true };
        if let Some(floor) = run.context_floor
            && window <= floor
        {
            return false;
        }
        requested || run.estimate <= window
    }

    /// Reserves room in the model's policy budget (`model_limits`), if it has one: `Some(wait)` before sending, `None`
    /// when the wait would exceed the queue limit (or the deadline).
    fn reserve_budget(&self, cx: &Cx<'_>, step: &Step, run: &Run) -> Option<Duration> {
        let Some(limit) = cx.set.policy.model_limits.get(&step.model) else { return Some(Duration::ZERO) };
        let max_queue = cx.set.policy.max_queue().min(cx.deadline.saturating_duration_since(Instant::now()));
        self.pacer.reserve(cx.set.key_set_id, &step.model, *limit, run.estimate, max_queue)
    }
}
