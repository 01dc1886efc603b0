//! One attempt at a selected target, optionally raced against a hedge on the next target when the first is slow. Every
//! attempt made (and every skip) becomes one event.

use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use chrono::Utc;

use super::classify::FailureClass;
use super::dialect::Translation;
use super::events::{AttemptEvent, AttemptResult, AttemptRole, Event, Usage};
use super::plan::{Plan, Step};
use super::run::{Cx, Run};
use super::select::{Skipped, Target};
use super::upstream::{self, AttemptFailure, AttemptOk, Limits, Wire};
use super::{Engine, hedge};
use crate::vault::ProviderKey;

/// The result of an attempt and the target that produced it (the hedge's, when the hedge won).
pub(super) struct Attempted<'p> {
    pub result: Result<AttemptOk, AttemptFailure>,
    pub by: Target<'p>,
}

/// What one event says about one attempt.
pub(super) struct Report<'a> {
    pub step: &'a Step,
    pub key: &'a ProviderKey,
    pub role: AttemptRole,
    pub result: AttemptResult,
    pub status: Option<u16>,
    pub latency: Duration,
    pub tokens: Option<Usage>,
}

impl Engine {
    /// Attempts `target` (after its budget wait), racing a hedge after `hedge` when given. Counts, reports and applies
    /// the side effects of the hedge's own failure; the caller decides what to do with the returned result.
    pub(super) async fn attempt<'p>(
        &self,
        cx: &Cx<'p>,
        plan: &'p Plan,
        run: &mut Run,
        target: Target<'p>,
        hedge: Option<Duration>,
    ) -> Attempted<'p> {
        if !target.pace.is_zero() {
            tokio::time::sleep(target.pace).await;
            run.waited += target.pace;
        }
        let started = Instant::now();
        let body = cx.req.body_for(&target.step.model);
        let (wire, content_type) = (cx.req.wire(), cx.req.content_type());
        let primary = self.call(target, body, content_type, wire, cx.deadline);
        run.attempts += 1;
        let Some(after) = hedge else {
            let result = primary.await;
            run.waited += started.elapsed();
            self.report_result(cx, run, target, AttemptRole::Main, &result, started.elapsed());
            return Attempted { result, by: target };
        };
        let mut hedged: Option<(Target<'p>, Instant)> = None;
        let raced = {
            let run: &Run = run;
            // Boxed: the race holds two calls at once, and inline it would double the size of every request's future
            // (which is moved, byte for byte, when the handler's future is boxed), hedged or not.
            Box::pin(hedge::race(primary, after, || {
                let pick = self.select(cx, plan, run, plan.next_step(target.pos), AttemptRole::Hedge);
                let hedge_target = pick.target?;
                hedged = Some((hedge_target, Instant::now()));
                let body = cx.req.body_for(&hedge_target.step.model);
                Some(self.call(hedge_target, body, content_type, wire, cx.deadline))
            }))
            .await
        };
        run.waited += started.elapsed();
        let (Some((hedge_target, hedge_started)), true) = (hedged, raced.hedge_started) else {
            self.report_result(cx, run, target, AttemptRole::Main, &raced.result, started.elapsed());
            return Attempted { result: raced.result, by: target };
        };
        run.attempts += 1;
        self.metrics.hedge_started();
        if raced.hedge_won {
            // The primary was slow and has been dropped (its request aborted).
            self.breakers.release_probe(&target.candidate.breaker);
            run.first_failure.get_or_insert(FailureClass::Timeout);
            self.report(cx, cancelled(target, AttemptRole::Main, started.elapsed()));
            self.report_result(cx, run, hedge_target, AttemptRole::Hedge, &raced.result, hedge_started.elapsed());
            return Attempted { result: raced.result, by: hedge_target };
        }
        match &raced.hedge_failure {
            Some(failure) => {
                run.note(hedge_target.step, hedge_target.key, failure.class, &failure.detail);
                self.report(cx, failed(hedge_target, AttemptRole::Hedge, failure, hedge_started.elapsed()));
                // Its health consequences (breaker, invalid key) hold; the decision belongs to the primary's result.
                let _ = self.decide(cx, run, hedge_target, failure, u32::MAX);
            }
            None => {
                self.breakers.release_probe(&hedge_target.candidate.breaker);
                self.report(cx, cancelled(hedge_target, AttemptRole::Hedge, hedge_started.elapsed()));
            }
        }
        self.report_result(cx, run, target, AttemptRole::Main, &raced.result, started.elapsed());
        Attempted { result: raced.result, by: target }
    }

    /// One HTTP call to `target` with `body`.
    pub(super) async fn call(
        &self,
        target: Target<'_>,
        body: Bytes,
        content_type: &str,
        wire: Wire,
        deadline: Instant,
    ) -> Result<AttemptOk, AttemptFailure> {
        let mut limits = self.limits(deadline);
        if matches!(wire, Wire::SlowJson | Wire::SlowBytes) {
            limits.first_byte_by = deadline;
        }
        if !target.step.provider.translated() {
            let client = self.clients.get();
            return upstream::attempt(&client, target.step, target.key, body, content_type, wire, &limits, None).await;
        }
        let default_max_tokens = self.catalog.default_max_tokens(&target.step.model);
        let (translation, body) = Translation::request(target.step, &body, wire == Wire::Sse, default_max_tokens)?;
        let client = self.clients.get();
        upstream::attempt(&client, target.step, target.key, body, "application/json", wire, &limits, Some(translation))
            .await
    }

    /// Time limits of an attempt starting now.
    pub(super) fn limits(&self, deadline: Instant) -> Limits {
        Limits {
            first_byte_by: (Instant::now() + self.settings.first_byte_timeout).min(deadline),
            deadline,
            idle: self.settings.stream_idle_timeout,
            max_body: self.settings.max_upstream_body,
            max_event: self.settings.max_sse_event,
        }
    }

    /// Reports an attempt's result (and counts the tokens a JSON answer reports).
    pub(super) fn report_result(
        &self,
        cx: &Cx<'_>,
        run: &mut Run,
        target: Target<'_>,
        role: AttemptRole,
        result: &Result<AttemptOk, AttemptFailure>,
        latency: Duration,
    ) {
        let report = match result {
            Ok(AttemptOk::Body { status, usage, .. }) => {
                let tokens = *usage;
                if let Some(t) = tokens {
                    run.billed.add(t);
                }
                Report {
                    step: target.step,
                    key: target.key,
                    role,
                    result: AttemptResult::Success,
                    status: Some(*status),
                    latency,
                    tokens,
                }
            }
            Ok(AttemptOk::Bytes { status, .. }) => Report {
                step: target.step,
                key: target.key,
                role,
                result: AttemptResult::Success,
                status: Some(*status),
                latency,
                tokens: None,
            },
            Ok(AttemptOk::Stream { .. }) => Report {
                step: target.step,
                key: target.key,
                role,
                result: AttemptResult::Success,
                status: Some(200),
                latency,
                tokens: None,
            },
            Err(failure) => failed(target, role, failure, latency),
        };
        self.report(cx, report);
    }

    /// Records skips (breaker open, over budget) like failures: fallback reason, total-failure message, events.
    pub(super) fn report_skips(&self, cx: &Cx<'_>, run: &mut Run, skipped: Vec<Skipped<'_>>, role: AttemptRole) {
        for s in skipped {
            run.note(s.step, s.key, s.class, s.detail);
            self.report(
                cx,
                Report {
                    step: s.step,
                    key: s.key,
                    role,
                    result: AttemptResult::Failed(s.class),
                    status: None,
                    latency: Duration::ZERO,
                    tokens: None,
                },
            );
        }
    }

    /// One attempt event and its metrics.
    pub(super) fn report(&self, cx: &Cx<'_>, r: Report<'_>) {
        let model = self.model_label(&r.step.model);
        self.metrics.attempt(r.result, model, r.step.provider);
        if let Some(tokens) = r.tokens {
            self.metrics.upstream_tokens(tokens, model, r.step.provider);
        }
        self.events.emit(
            Event::Attempt(AttemptEvent {
                at: Utc::now(),
                key_set_id: cx.set.key_set_id,
                instance: cx.req.instance.clone(),
                endpoint: cx.req.endpoint,
                model: r.step.model.clone(),
                provider: r.step.provider,
                key_id: r.key.id,
                role: r.role,
                result: r.result,
                status: r.status,
                latency: r.latency,
                tokens: r.tokens,
            }),
            &self.metrics,
        );
    }
}

fn failed<'a>(target: Target<'a>, role: AttemptRole, failure: &AttemptFailure, latency: Duration) -> Report<'a> {
    Report {
        step: target.step,
        key: target.key,
        role,
        result: AttemptResult::Failed(failure.class),
        status: failure.status,
        latency,
        tokens: None,
    }
}

fn cancelled(target: Target<'_>, role: AttemptRole, latency: Duration) -> Report<'_> {
    Report {
        step: target.step,
        key: target.key,
        role,
        result: AttemptResult::Cancelled,
        status: None,
        latency,
        tokens: None,
    }
}
