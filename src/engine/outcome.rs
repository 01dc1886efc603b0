//! After the last target: the outcome chain (context upgrade → answer from elsewhere → `graceful_string` → error), and
//! the "after" step every request goes through however it ended (metrics, one outcome event, a log line, write-through).

use std::sync::Arc;

use chrono::Utc;

use super::admit::{Permit, Shed};
use super::events::{Event, OutcomeEvent, RequestOutcome, Usage};
use super::plan::{Plan, PlanInput, ProviderKind};
use super::run::{Cx, Run};
use super::substitute::{Ask, AskReason, Completion, Substitute, SubstituteSource, render};
use super::{Ended, Engine, FailureClass, Reply, Served};

/// How a request ended, for the "after" step.
pub(super) struct Ending {
    pub outcome: RequestOutcome,
    /// The model and provider that answered, if an upstream did.
    pub served_by: Option<(String, ProviderKind)>,
    pub usage: Option<Usage>,
    /// The answer's text, only when write-through wants it.
    pub text: Option<String>,
}

/// Hops followed along the catalog's `context_upgrade` links.
const MAX_UPGRADE_HOPS: usize = 8;

impl Engine {
    /// Every target of `plan` failed (or was skipped).
    pub(super) async fn after_last_target(
        self: &Arc<Self>,
        cx: &Cx<'_>,
        plan: &Arc<Plan>,
        mut run: Run,
        permit: Permit,
    ) -> Reply {
        // 1. A larger-context model the plan did not hold.
        if run.context_error.is_some()
            && !run.deadline_hit
            && let Some(upgrade) = self.upgrade_plan(cx, plan, &run)
        {
            tracing::info!(model = %upgrade.steps[0].model, "no planned model fits the prompt; trying a larger context");
            match self.try_targets(cx, &upgrade, &mut run, 0).await {
                Ended::Answered(target, ok) => {
                    let pos = target.pos;
                    return self.answered(cx, &upgrade, pos, ok, run, permit);
                }
                Ended::Refused(target, failure) => return self.refused(cx, run, target, failure),
                Ended::Exhausted => {}
            }
        }
        let load = permit.load();
        drop(permit);
        // 2. An answer from elsewhere (the semantic cache).
        if cx.caching
            && let Some(answer) = self.ask_elsewhere(cx, AskReason::AllFailed, load).await
        {
            return self.substitute(cx, &run, answer);
        }
        // 3. The original context error when nothing could fit the prompt.
        if let Some((status, body)) = run.context_error.clone()
            && run.failures.iter().all(|(c, _)| matches!(c, FailureClass::ContextTooLong | FailureClass::ModelNotFound))
        {
            self.finish(cx, &run, Ending::unanswered(RequestOutcome::Failed));
            return Reply::Upstream { status, body, served: self.served(cx, &run, None) };
        }
        // 4. The policy's graceful answer.
        if let Some(text) = &cx.set.policy.graceful_string
            && cx.req.endpoint.generates_text()
        {
            let answer =
                Substitute { text: text.clone(), model: cx.req.model.clone(), source: SubstituteSource::Graceful };
            return self.substitute(cx, &run, answer);
        }
        // 5. The error.
        self.finish(cx, &run, Ending::unanswered(RequestOutcome::Failed));
        let (status, code, message) = failure_message(&run);
        tracing::warn!(status, code, attempts = run.attempts, "every upstream failed");
        Reply::Failed { status, code, message, retry_after: None, served: self.served(cx, &run, None) }
    }

    /// Over `max_concurrency` for longer than the queue allows: an answer from elsewhere, else 503 `overloaded`.
    pub(super) async fn shed(&self, cx: &Cx<'_>, shed: Shed) -> Reply {
        let run = Run::default();
        if cx.caching
            && let Some(answer) = self.ask_elsewhere(cx, AskReason::Overloaded, shed.load).await
        {
            return self.substitute(cx, &run, answer);
        }
        self.finish(cx, &run, Ending::unanswered(RequestOutcome::Shed));
        let message = format!(
            "This key set is at its max_concurrency ({}) and no slot freed up within max_queue_ms ({} ms). Retry later.",
            cx.set.policy.max_concurrency.unwrap_or(0),
            cx.set.policy.max_queue().as_millis()
        );
        Reply::Failed {
            status: 503,
            code: "overloaded",
            message,
            retry_after: Some(shed.retry_after),
            served: self.served(cx, &run, None),
        }
    }

    pub(super) async fn ask_elsewhere(&self, cx: &Cx<'_>, reason: AskReason, load: f32) -> Option<Substitute> {
        let ask = Ask {
            key_set_id: cx.set.key_set_id,
            instance: &cx.req.instance,
            endpoint: cx.req.endpoint,
            body: cx.req.body(),
            policy: &cx.set.policy,
            reason,
            load,
        };
        self.answers.lookup(ask).await
    }

    pub(super) fn substitute(&self, cx: &Cx<'_>, run: &Run, answer: Substitute) -> Reply {
        self.finish(cx, run, Ending::unanswered(answer.source.outcome()));
        let body = render(cx.req.endpoint, cx.req.stream, &answer);
        let mut served = self.served(cx, run, None);
        served.model = answer.model;
        Reply::Substitute { body, stream: cx.req.stream, source: answer.source, served }
    }

    /// A plan holding the requested model's larger-context upgrade (per the catalog) that fits what we know of the
    /// prompt, when the plan did not already try it.
    fn upgrade_plan(&self, cx: &Cx<'_>, plan: &Plan, run: &Run) -> Option<Arc<Plan>> {
        let floor = run.context_floor.unwrap_or(0);
        let mut model = cx.req.model.as_str();
        for _ in 0..MAX_UPGRADE_HOPS {
            model = self.catalog.context_upgrade(model)?;
            let window = self.catalog.context_window(model).unwrap_or(0);
            if window > floor && window >= run.estimate(cx.req) && !plan.steps.iter().any(|s| s.model == model) {
                let none: &[String] = &[];
                let input = PlanInput {
                    endpoint: cx.req.endpoint,
                    model,
                    fallbacks: Some(none),
                    openai_base_url: &self.settings.openai_base_url,
                    only_key: cx.req.pinned_key,
                };
                let upgrade = self.plan_for(cx.set, &input);
                return (!upgrade.candidates.is_empty()).then_some(upgrade);
            }
        }
        None
    }

    /// The "after" step: one outcome per request, used by metrics, logs and events alike.
    pub(super) fn finish(&self, cx: &Cx<'_>, run: &Run, ending: Ending) {
        let (served_model, provider) = match &ending.served_by {
            Some((model, provider)) => (model.as_str(), Some(*provider)),
            None => (cx.req.model.as_str(), None),
        };
        let label = self.model_label(served_model);
        self.metrics.request(ending.outcome, label, provider);
        if ending.outcome.answered()
            && let (Some(reason), Some(provider)) = (run.first_failure, provider)
        {
            self.metrics.fallback(reason, label, provider);
        }
        let latency = cx.started.elapsed();
        if ending.outcome == RequestOutcome::Success {
            tracing::debug!(outcome = ending.outcome.as_str(), attempts = run.attempts, "request finished");
        } else {
            tracing::info!(
                outcome = ending.outcome.as_str(),
                attempts = run.attempts,
                fallback_reason = run.first_failure.map(FailureClass::as_str),
                served_model = ending.served_by.as_ref().map(|(m, _)| m.as_str()),
                latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
                "request finished"
            );
        }
        if cx.caching
            && ending.outcome.answered()
            && let (Some(text), Some((model, _))) = (ending.text, &ending.served_by)
        {
            self.answers.completed(Completion {
                key_set_id: cx.set.key_set_id,
                instance: cx.req.instance.clone(),
                endpoint: cx.req.endpoint,
                request: cx.req.clone(),
                set: cx.set.clone(),
                outcome: ending.outcome,
                model: model.clone(),
                text,
                usage: ending.usage,
            });
        }
        self.events.emit(
            Event::Outcome(OutcomeEvent {
                at: Utc::now(),
                key_set_id: cx.set.key_set_id,
                instance: cx.req.instance.clone(),
                endpoint: cx.req.endpoint,
                requested_model: cx.req.model.clone(),
                served_by: ending.served_by,
                outcome: ending.outcome,
                fallback_reason: run.first_failure,
                attempts: run.attempts,
                latency,
                usage: ending.usage,
                billed: run.billed,
            }),
            &self.metrics,
        );
    }

    pub(super) fn served(&self, cx: &Cx<'_>, run: &Run, by: Option<(&str, ProviderKind)>) -> Served {
        Served {
            model: by.map_or_else(|| cx.req.model.clone(), |(m, _)| m.to_owned()),
            provider: by.map(|(_, p)| p),
            attempts: run.attempts,
            fallback_reason: run.first_failure,
            upstream_time: run.waited,
            key_id: None,
        }
    }
}

impl Ending {
    pub fn unanswered(outcome: RequestOutcome) -> Self {
        Self { outcome, served_by: None, usage: None, text: None }
    }
}

/// The status, code and message of a total failure: the most meaningful status, and every attempt listed.
fn failure_message(run: &Run) -> (u16, &'static str, String) {
    let classes: Vec<FailureClass> = run.failures.iter().map(|(c, _)| *c).collect();
    let all = |c: FailureClass| !classes.is_empty() && classes.iter().all(|x| *x == c);
    let (status, code) = if run.deadline_hit {
        (504, "deadline_exceeded")
    } else if classes.is_empty() || all(FailureClass::BreakerOpen) {
        (503, "no_available_upstream")
    } else if all(FailureClass::RateLimited) {
        (429, "upstream_rate_limited")
    } else if all(FailureClass::Timeout) {
        (504, "upstream_timeout")
    } else if all(FailureClass::Credential) {
        (401, "upstream_credentials_invalid")
    } else if classes
        .iter()
        .any(|c| matches!(c, FailureClass::Transient | FailureClass::RateLimited | FailureClass::BreakerOpen))
    {
        (503, "upstream_unavailable")
    } else {
        (502, "upstream_failed")
    };
    let message = if run.failures.is_empty() {
        if run.deadline_hit {
            "The request deadline passed before any upstream could be tried.".to_owned()
        } else {
            "No upstream could be tried: every key is invalid or cooling down, or no planned model fits the prompt."
                .to_owned()
        }
    } else {
        let list: Vec<&str> = run.failures.iter().map(|(_, d)| d.as_str()).collect();
        format!(
            "{}All {} upstream attempts failed: {}",
            if run.deadline_hit { "The request deadline passed. " } else { "" },
            run.attempts,
            list.join("; ")
        )
    };
    (status, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(classes: &[FailureClass]) -> Run {
        let mut run = Run::default();
        for c in classes {
            run.failures.push((*c, format!("m via openai key k: {}", c.as_str())));
            run.attempts += u32::from(*c != FailureClass::BreakerOpen);
        }
        run
    }

    #[test]
    fn total_failure_status_follows_the_classes() {
        use FailureClass::*;
        for (classes, status, code) in [
            (vec![], 503, "no_available_upstream"),
            (vec![BreakerOpen, BreakerOpen], 503, "no_available_upstream"),
            (vec![RateLimited], 429, "upstream_rate_limited"),
            (vec![Timeout, Timeout], 504, "upstream_timeout"),
            (vec![Credential], 401, "upstream_credentials_invalid"),
            (vec![Credential, Transient], 503, "upstream_unavailable"),
            (vec![BreakerOpen, Timeout], 503, "upstream_unavailable"),
            (vec![ModelNotFound], 502, "upstream_failed"),
        ] {
            let (s, c, message) = failure_message(&run(&classes));
            assert_eq!((s, c), (status, code), "{classes:?}");
            for class in &classes {
                assert!(message.contains(class.as_str()), "{message}");
            }
        }
        let mut late = run(&[Transient]);
        late.deadline_hit = true;
        let (s, c, message) = failure_message(&late);
        assert_eq!((s, c), (504, "deadline_exceeded"));
        assert!(message.starts_with("The request deadline passed."), "{message}");
    }
}
