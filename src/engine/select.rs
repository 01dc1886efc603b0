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
            if !self.fits(cx, step, candidate.step == 0, run) {
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
            let Some(pace) = self.reserve_budget(cx, step, run, role) else {
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
            pick.target = Some(Target { pos: here, step, key, candidate, admission, pace });
            return pick;
        }
        pick
    }

    /// Before a retry of the same target: a retry is one more upstream request, so it needs room in the model's budget
    /// too. False (nothing reserved, the skip noted): over budget, move on.
    pub(super) fn pace_retry(&self, cx: &Cx<'_>, target: &mut Target<'_>, run: &mut Run) -> bool {
        match self.reserve_budget(cx, target.step, run, AttemptRole::Main) {
            Some(pace) => {
                target.pace = pace;
                true
            }
            None => {
                run.note(target.step, target.key, FailureClass::RateLimited, "over its policy budget (model_limits)");
                false
            }
        }
    }

    /// A fallback is skipped when the catalog says the prompt cannot fit, and after a context-length error only larger
    /// windows are tried. Unknown models are always tried, and so is the requested model: the upstream has the last
    /// word.
    fn fits(&self, cx: &Cx<'_>, step: &Step, requested: bool, run: &Run) -> bool {
        let Some(window) = self.catalog.context_window(&step.model) else { return true };
        if let Some(floor) = run.context_floor
            && window <= floor
        {
            return false;
        }
        requested || run.estimate(cx.req) <= window
    }

    /// Reserves room in the model's policy budget (`model_limits`), if it has one: `Some(wait)` before sending, `None`
    /// (nothing reserved) when the wait would exceed the queue limit or the deadline. Hedges are only worth it when
    /// they can start at once.
    fn reserve_budget(&self, cx: &Cx<'_>, step: &Step, run: &Run, role: AttemptRole) -> Option<Duration> {
        let Some(limit) = cx.set.policy.model_limits.get(&step.model) else { return Some(Duration::ZERO) };
        let max_queue = if role == AttemptRole::Hedge { Duration::ZERO } else { cx.set.policy.max_queue() };
        let max_queue = max_queue.min(cx.deadline.saturating_duration_since(Instant::now()));
        self.pacer.reserve(cx.set.key_set_id, &step.model, *limit, run.estimate(cx.req), max_queue)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::EngineSettings;
    use crate::engine::testing::{cx, engine, key_set, plan, request};
    use crate::vault::Policy;
    use crate::vault::input::ModelLimit;

    fn policy(fallbacks: &[&str]) -> Policy {
        Policy { fallback_strategy: fallbacks.iter().map(|m| m.to_string()).collect(), ..Policy::default() }
    }

    fn picked(pick: &Pick<'_>) -> Option<(usize, String)> {
        pick.target.map(|t| (t.pos, t.step.model.clone()))
    }

    #[tokio::test]
    async fn burned_keys_and_open_breakers_are_passed_over_and_only_the_breaker_is_reported() {
        let e = engine(EngineSettings { breaker_failures: 1, ..EngineSettings::default() });
        let (set, req) = (key_set(2, policy(&["gpt-4o-mini"])), request("gpt-4o"));
        let p = plan(&e, &set, &req);
        let cx = cx(&set, &req);
        let mut run = Run::default();
        assert_eq!(picked(&e.select(&cx, &p, &run, 0, AttemptRole::Main)), Some((0, "gpt-4o".into())));
        run.burned_keys.push(set.keys[0].id);
        let pick = e.select(&cx, &p, &run, 0, AttemptRole::Main);
        assert_eq!((picked(&pick), pick.skipped.len()), (Some((1, "gpt-4o".into())), 0));

        e.breakers.record_failure(&p.candidates[1].breaker);
        let pick = e.select(&cx, &p, &run, 0, AttemptRole::Main);
        assert_eq!(
            picked(&pick),
            Some((3, "gpt-4o-mini".into())),
            "key 0 is burned everywhere, key 1's gpt-4o is open"
        );
        let skipped: Vec<(&str, FailureClass)> =
            pick.skipped.iter().map(|s| (s.step.model.as_str(), s.class)).collect();
        assert_eq!(skipped, vec![("gpt-4o", FailureClass::BreakerOpen)]);
    }

    #[tokio::test]
    async fn prompts_that_cannot_fit_skip_fallbacks_but_never_the_requested_model() {
        let e = engine(EngineSettings::default());
        let (set, req) = (key_set(1, policy(&["gpt-4", "gpt-4o"])), request("gpt-3.5-turbo"));
        let p = plan(&e, &set, &req);
        let cx = cx(&set, &req);
        let mut run = Run::new(20_000);
        assert_eq!(picked(&e.select(&cx, &p, &run, 0, AttemptRole::Main)), Some((0, "gpt-3.5-turbo".into())));
        assert_eq!(picked(&e.select(&cx, &p, &run, 1, AttemptRole::Main)), Some((2, "gpt-4o".into())), "gpt-4 is 8k");
        run.context_floor = Some(128_000);
        let pick = e.select(&cx, &p, &run, 1, AttemptRole::Main);
        assert!(pick.target.is_none() && pick.skipped.is_empty(), "after a context error only larger windows");
    }

    #[tokio::test]
    async fn an_exhausted_model_budget_skips_its_step_and_a_hedge_never_waits_for_one() {
        let e = engine(EngineSettings::default());
        let mut p = policy(&["gpt-4o-mini"]);
        p.model_limits = BTreeMap::from([("gpt-4o".to_owned(), ModelLimit { rpm: Some(1), tpm: None })]);
        p.max_queue_ms = Some(0);
        let (set, req) = (key_set(2, p), request("gpt-4o"));
        let plan = plan(&e, &set, &req);
        let cx = cx(&set, &req);
        let run = Run::default();
        assert_eq!(picked(&e.select(&cx, &plan, &run, 0, AttemptRole::Main)), Some((0, "gpt-4o".into())));
        let pick = e.select(&cx, &plan, &run, 0, AttemptRole::Main);
        assert_eq!(picked(&pick), Some((2, "gpt-4o-mini".into())), "the rest of the over-budget step is skipped");
        let skipped: Vec<FailureClass> = pick.skipped.iter().map(|s| s.class).collect();
        assert_eq!(skipped, vec![FailureClass::RateLimited]);

        // A budget of 1000 a minute: its burst goes at once, then each request waits 60 ms for its slot.
        let mut queued = policy(&["gpt-4o-mini"]);
        queued.model_limits = BTreeMap::from([("gpt-4o-mini".to_owned(), ModelLimit { rpm: Some(1_000), tpm: None })]);
        let (set, req) = (key_set(1, queued), request("gpt-4o"));
        let plan = crate::engine::testing::plan(&e, &set, &req);
        let cx = crate::engine::testing::cx(&set, &req);
        for _ in 0..1_000 {
            assert!(e.select(&cx, &plan, &run, 1, AttemptRole::Main).target.is_some_and(|t| t.pace.is_zero()));
        }
        assert!(e.select(&cx, &plan, &run, 1, AttemptRole::Hedge).target.is_none(), "a hedge would have to wait");
        let waiting = e.select(&cx, &plan, &run, 1, AttemptRole::Main).target.unwrap();
        assert!(waiting.pace > Duration::ZERO && waiting.pace <= Duration::from_millis(60), "{:?}", waiting.pace);
    }

    #[tokio::test]
    async fn a_retry_needs_room_in_the_budget_too() {
        let e = engine(EngineSettings::default());
        let mut p = policy(&[]);
        p.model_limits = BTreeMap::from([("gpt-4o".to_owned(), ModelLimit { rpm: Some(2), tpm: None })]);
        p.max_queue_ms = Some(0);
        let (set, req) = (key_set(1, p), request("gpt-4o"));
        let plan = plan(&e, &set, &req);
        let cx = cx(&set, &req);
        let mut run = Run::default();
        let mut target = e.select(&cx, &plan, &run, 0, AttemptRole::Main).target.unwrap();
        assert!(e.pace_retry(&cx, &mut target, &mut run), "the second request of the minute fits");
        assert!(!e.pace_retry(&cx, &mut target, &mut run), "the third does not");
        assert_eq!(run.first_failure, Some(FailureClass::RateLimited));
    }

    #[tokio::test]
    async fn nothing_is_selected_after_the_deadline() {
        let e = engine(EngineSettings::default());
        let (set, req) = (key_set(1, policy(&[])), request("gpt-4o"));
        let p = plan(&e, &set, &req);
        let mut cx = cx(&set, &req);
        cx.deadline = Instant::now();
        let pick = e.select(&cx, &p, &Run::default(), 0, AttemptRole::Main);
        assert!(pick.deadline_passed && pick.target.is_none());
    }
}
