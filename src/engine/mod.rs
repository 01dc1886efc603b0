//! The fallback engine: one pipeline that every gateway request goes through.
//!
//! ```text
//! admit ─► plan ─► select ─► attempt ─► decide ──┐  retry / rotate key / move on: back to select
//!   │       (memoised per    (one rule set)       │
//!   │        opened key set)                      ▼
//!   ▼                                  after the last target: context upgrade → answer from elsewhere
//! shed (503) or answer                 (cache) → graceful_string → error
//! from elsewhere                                       │
//!                                                      ▼
//!        the "after" step (always): metrics, one outcome event, log line, write-through
//! ```
//! A stream's "after" step runs when it ends ([`stream`]); stream rescue selects its targets with the same rules.

mod admit;
mod attempt;
mod breaker;
pub mod catalog;
mod chunk;
pub mod classify;
mod clients;
mod decide;
mod dialect;
pub mod events;
mod health;
mod hedge;
pub mod metrics;
pub mod multipart;
mod outcome;
mod pacing;
pub mod plan;
mod request;
mod rescue;
pub mod responses;
mod run;
mod select;
pub mod settings;
mod stream;
pub mod substitute;
pub mod surface;
mod translate;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::config::EngineSettings;
use crate::egress::EgressPolicy;
use crate::vault::{OpenKeySet, Vault};
pub use admit::Gates;
pub use breaker::{Admission, BreakerState, Breakers, TargetKey};
use catalog::Catalog;
pub use classify::FailureClass;
use decide::Next;
use events::{AttemptRole, EventSink, RequestOutcome};
use health::{CooldownRecorder, KeyHealth, UsageRecorder};
use metrics::Metrics;
use outcome::Ending;
pub use plan::{Endpoint, ProviderKind, Step};
use plan::{Plan, PlanInput};
pub use request::{
    Continuation, DEFAULT_INSTANCE, Form, GatewayRequest, continuation_instruction, include_usage, valid_instance,
};
use run::{Cx, Run};
use select::Target;
pub use stream::StreamEnd;
use substitute::{AnswerSource, AskReason, BUSY_LOAD, NoAnswers, SubstituteSource};
use upstream::{AttemptFailure, AttemptOk};

/// Who answered, for the response headers.
#[derive(Debug, Clone)]
pub struct Served {
    pub model: String,
    /// `None` when no upstream answered (a substitute or an error).
    pub provider: Option<ProviderKind>,
    pub attempts: u32,
    pub fallback_reason: Option<FailureClass>,
    /// Time spent waiting on upstreams and deliberate sleeps until the reply was ready (not the gateway's overhead).
    pub upstream_time: Duration,
    /// The provider key that answered (Responses are pinned to it); `None` when no upstream answered.
    pub key_id: Option<uuid::Uuid>,
}

pub enum Reply {
    /// The upstream's answer: a success, or (for caller faults, content filters and unfittable prompts) its error
    /// status and body unchanged.
    Upstream { status: u16, body: Bytes, served: Served },
    /// A stream: the first event, then the rest as it arrives; `done` reports how it ended.
    Stream { first: Bytes, rest: mpsc::Receiver<Bytes>, served: Served, done: oneshot::Receiver<StreamEnd> },
    /// An answer that did not come from an upstream (the cache, or the policy's `graceful_string`), already rendered
    /// as the client's endpoint would answer (SSE when `stream`).
    Substitute { body: Bytes, stream: bool, source: SubstituteSource, served: Served },
    /// A body passed through as it arrives (speech audio), with the upstream's status and `Content-Type`; an `Err`
    /// means it broke after its first bytes (the client's response must be aborted, not ended).
    Bytes {
        status: u16,
        content_type: Option<reqwest::header::HeaderValue>,
        first: Bytes,
        rest: mpsc::Receiver<Result<Bytes, surface::BodyBroken>>,
        served: Served,
    },
    /// An error in the OpenAI shape.
    Failed { status: u16, code: &'static str, message: String, retry_after: Option<Duration>, served: Served },
}

/// How the targets of a plan ended.
enum Ended<'p> {
    Answered(Target<'p>, AttemptOk),
    /// The upstream refused the request itself: its answer goes back unchanged.
    Refused(Target<'p>, AttemptFailure),
    Exhausted,
}

pub struct Engine {
    clients: clients::Clients,
    settings: EngineSettings,
    catalog: Catalog,
    breakers: Breakers,
    keys: Arc<KeyHealth>,
    usage: UsageRecorder,
    cooldowns: CooldownRecorder,
    pacer: pacing::Pacer,
    gates: Arc<Gates>,
    events: EventSink,
    pub metrics: Arc<Metrics>,
    vault: Vault,
    egress: EgressPolicy,
    answers: Arc<dyn AnswerSource>,
    prefill: rescue::PrefillKnowledge,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("model catalog {path}: {reason}")]
    Catalog { path: String, reason: String },
}

impl Engine {
    pub fn new(
        settings: EngineSettings,
        egress: EgressPolicy,
        vault: Vault,
        events: EventSink,
    ) -> Result<Self, EngineError> {
        let catalog = Catalog::load(settings.model_catalog.as_deref()).map_err(|reason| EngineError::Catalog {
            path: settings.model_catalog.clone().unwrap_or_else(|| "(shipped)".to_owned()),
            reason,
        })?;
        Ok(Self {
            clients: clients::Clients::new(settings.connect_timeout, egress.clone())?,
            egress,
            breakers: Breakers::new(settings.breaker_failures, settings.breaker_open),
            keys: Arc::new(KeyHealth::new(settings.key_retry_after)),
            usage: UsageRecorder::default(),
            cooldowns: CooldownRecorder::default(),
            pacer: pacing::Pacer::default(),
            gates: Arc::new(Gates::default()),
            metrics: Arc::new(Metrics::new(&catalog.names())),
            settings,
            catalog,
            events,
            vault,
            answers: Arc::new(NoAnswers),
            prefill: rescue::PrefillKnowledge::default(),
        })
    }

    /// Where answers come from when no upstream can give one (the semantic cache).
    pub fn with_answer_source(mut self, answers: Arc<dyn AnswerSource>) -> Self {
        self.answers = answers;
        self
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// Background work: flushing `last_used_at` of keys every few seconds, dropping expired per-target state and cached
    /// key sets, and storing rate-limit cooldowns as they come (one writer, coalesced per key).
    pub fn spawn_background(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let ticker = {
            let engine = self.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                let mut pruned_at: Option<Instant> = None;
                loop {
                    tick.tick().await;
                    if pruned_at.is_none_or(|at| at.elapsed() >= responses::PRUNE_EVERY) {
                        pruned_at = Some(Instant::now());
                        if let Err(e) = engine.vault.prune_response_keys(responses::PINS_KEPT).await {
                            tracing::warn!(error = %e, "could not prune old stored-response records");
                        }
                    }
                    let used = engine.usage.drain();
                    if !used.is_empty()
                        && let Err(e) = engine.vault.touch_keys(&used).await
                    {
                        tracing::warn!(error = %e, "could not record key usage");
                    }
                    engine.breakers.sweep();
                    engine.keys.sweep();
                    engine.pacer.sweep();
                    engine.vault.sweep_cache();
                }
            }
        };
        let cooldowns = {
            let engine = self.clone();
            async move {
                loop {
                    for (target, until) in engine.cooldowns.next_batch().await {
                        if let Err(e) = engine.vault.set_cooldown(target.key_id, Some(until)).await {
                            tracing::warn!(error = %e, "could not record a key's cooldown");
                        }
                        let note =
                            serde_json::to_string(&health::CooldownNote::new(&target, until)).unwrap_or_default();
                        if let Err(e) = engine.vault.announce_cooldown(&note).await {
                            tracing::warn!(error = %e, "could not announce a cooldown to the other replicas");
                        }
                    }
                }
            }
        };
        // Other replicas' cooldowns (and this one's, which changes nothing): their targets' breakers open here too.
        let mut notes = self.vault.cooldown_notes();
        let heard = {
            let engine = self.clone();
            async move {
                loop {
                    match notes.recv().await {
                        Ok(payload) => {
                            if let Some((target, wait)) = health::CooldownNote::parse(&payload) {
                                engine.breakers.open_for(&target, wait);
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
                }
            }
        };
        tokio::spawn(async move {
            tokio::join!(ticker, cooldowns, heard);
        })
    }

    /// Serves one request, top to bottom: admit → plan → targets → outcome chain; every path ends in the "after" step.
    pub async fn serve(self: &Arc<Self>, set: Arc<OpenKeySet>, req: GatewayRequest) -> Reply {
        let started = Instant::now();
        let req = Arc::new(req);
        let default_timeout = match req.endpoint {
            Endpoint::ImageGenerations | Endpoint::Transcriptions => {
                self.settings.request_timeout.max(surface::SLOW_MIN_TIMEOUT)
            }
            _ => self.settings.request_timeout,
        };
        let cx = Cx {
            set: &set,
            req: &req,
            started,
            deadline: started + req.timeout.unwrap_or(default_timeout),
            hedge: req.hedge.or(set.policy.hedge_ms.map(|ms| Duration::from_millis(u64::from(ms)))),
            // The semantic cache holds text answers only.
            caching: req.caching.unwrap_or(set.policy.caching) && req.endpoint.generates_text(),
        };
        // Admit.
        let permit = match self
            .gates
            .admit(set.key_set_id, set.policy.max_concurrency, set.policy.max_queue(), &self.metrics)
            .await
        {
            Ok(permit) => permit,
            // The paths off the common one are boxed, so that their futures do not add to every request's future.
            Err(shed) => return Box::pin(self.shed(&cx, shed)).await,
        };
        // Cache-first, or busy: a cached answer before any upstream call.
        let early = if permit.load() >= BUSY_LOAD {
            Some(AskReason::Busy)
        } else {
            set.policy.cache_first.then_some(AskReason::CacheFirst)
        };
        if cx.caching
            && let Some(reason) = early
            && let Some(answer) = Box::pin(self.ask_elsewhere(&cx, reason, permit.load())).await
        {
            return self.substitute(&cx, &Run::default(), answer);
        }
        // Plan.
        let input = PlanInput {
            endpoint: req.endpoint,
            model: &req.model,
            fallbacks: req.fallbacks.as_deref(),
            openai_base_url: &self.settings.openai_base_url,
            only_key: req.pinned_key,
        };
        let plan = self.plan_for(&set, &input);
        let mut run = Run::default();
        // Select → attempt → decide, until a target answers or none is left.
        match self.try_targets(&cx, &plan, &mut run, 0).await {
            Ended::Answered(target, ok) => {
                let pos = target.pos;
                self.answered(&cx, &plan, pos, ok, run, permit)
            }
            Ended::Refused(target, failure) => self.refused(&cx, run, target, failure),
            // The outcome chain.
            Ended::Exhausted => Box::pin(self.after_last_target(&cx, &plan, run, permit)).await,
        }
    }

    /// The plan for this request shape on this opened key set, built once.
    fn plan_for(&self, set: &OpenKeySet, input: &PlanInput<'_>) -> Arc<Plan> {
        set.plans.get_or_build(input, || plan::plan(set, input, &self.catalog, |step| self.egress_allows(step)))
    }

    /// The main loop over one plan's targets.
    async fn try_targets<'p>(&self, cx: &Cx<'p>, plan: &'p Plan, run: &mut Run, from: usize) -> Ended<'p> {
        let mut pos = from;
        loop {
            let pick = self.select(cx, plan, run, pos, AttemptRole::Main);
            self.report_skips(cx, run, pick.skipped, AttemptRole::Main);
            if pick.deadline_passed {
                run.deadline_hit = true;
            }
            let Some(mut target) = pick.target else { return Ended::Exhausted };
            let mut retries = 0;
            loop {
                let hedge = if retries == 0 { cx.hedge } else { None };
                let attempted = self.attempt(cx, plan, run, target, hedge).await;
                let failure = match attempted.result {
                    Ok(ok) => return Ended::Answered(attempted.by, ok),
                    Err(failure) => failure,
                };
                run.note(target.step, target.key, failure.class, &failure.detail);
                tracing::info!(
                    model = %target.step.model,
                    provider = target.step.provider.as_str(),
                    key_id = %target.key.id,
                    class = failure.class.as_str(),
                    status = failure.status,
                    "upstream attempt failed"
                );
                match self.decide(cx, run, target, &failure, retries) {
                    Next::Retry(wait) => {
                        tokio::time::sleep(wait).await;
                        run.waited += wait;
                        retries += 1;
                        if !self.pace_retry(cx, &mut target, run) {
                            pos = plan.next_step(target.pos);
                            break;
                        }
                    }
                    Next::RotateKey => {
                        pos = target.pos + 1;
                        break;
                    }
                    Next::MoveOn => {
                        pos = plan.next_step(target.pos);
                        break;
                    }
                    Next::ReturnUpstream => return Ended::Refused(target, failure),
                }
            }
        }
    }

    /// A target answered: record its health and turn the answer into the reply (for a stream: start the pump, whose
    /// end runs the "after" step).
    fn answered(
        self: &Arc<Self>,
        cx: &Cx<'_>,
        plan: &Arc<Plan>,
        pos: usize,
        ok: AttemptOk,
        run: Run,
        permit: admit::Permit,
    ) -> Reply {
        let Some(candidate) = plan.candidates.get(pos) else {
            return Reply::Failed {
                status: 500,
                code: "internal_error",
                message: "Internal error.".to_owned(),
                retry_after: None,
                served: self.served(cx, &run, None),
            };
        };
        let (step, key) = (&plan.steps[candidate.step], &cx.set.keys[candidate.key]);
        self.on_success(cx.set, key, &candidate.breaker);
        let mut served = self.served(cx, &run, Some((&step.model, step.provider)));
        served.key_id = Some(key.id);
        let outcome =
            if run.first_failure.is_some() { RequestOutcome::FallbackSuccess } else { RequestOutcome::Success };
        match ok {
            AttemptOk::Body { status, body, usage } => {
                let ending = Ending {
                    outcome,
                    served_by: Some((step.model.clone(), step.provider)),
                    usage,
                    text: cx
                        .caching
                        .then(|| match cx.req.endpoint {
                            Endpoint::Responses => responses::answer_text(&body),
                            _ => stream::answer_text(&body),
                        })
                        .flatten(),
                };
                self.finish(cx, &run, ending);
                drop(permit);
                Reply::Upstream { status, body, served }
            }
            AttemptOk::Bytes { status, content_type, first, rest } => {
                let (tx, rx) = mpsc::channel(64);
                let job = surface::BytesJob {
                    engine: self.clone(),
                    set: cx.set.clone(),
                    req: cx.req.clone(),
                    plan: plan.clone(),
                    started: cx.started,
                    pos,
                    run,
                    _permit: permit,
                    tx,
                };
                tokio::spawn(job.pump(rest, first.len()).in_current_span());
                Reply::Bytes { status, content_type, first, rest: rx, served }
            }
            AttemptOk::Stream { reader, first } => {
                let (tx, rx) = mpsc::channel(64);
                let (done_tx, done) = oneshot::channel();
                let first_bytes = first.raw.clone();
                let job = stream::StreamJob {
                    engine: self.clone(),
                    set: cx.set.clone(),
                    req: cx.req.clone(),
                    plan: plan.clone(),
                    started: cx.started,
                    caching: cx.caching,
                    pos,
                    run,
                    _permit: permit,
                    tx,
                    done: done_tx,
                };
                if cx.req.endpoint == Endpoint::Responses {
                    tokio::spawn(responses::pump(job, reader, first).in_current_span());
                } else {
                    tokio::spawn(job.pump(reader, first).in_current_span());
                }
                Reply::Stream { first: first_bytes, rest: rx, served, done }
            }
        }
    }

    /// The upstream refused the request itself (caller fault, content filter): its answer, unchanged.
    fn refused(&self, cx: &Cx<'_>, run: Run, target: Target<'_>, failure: AttemptFailure) -> Reply {
        let served_by = Some((target.step.model.clone(), target.step.provider));
        self.finish(cx, &run, Ending { outcome: RequestOutcome::CallerError, served_by, usage: None, text: None });
        let mut served = self.served(cx, &run, Some((&target.step.model, target.step.provider)));
        served.fallback_reason = None;
        Reply::Upstream { status: failure.status.unwrap_or(502), body: failure.body.unwrap_or_default(), served }
    }

    /// Azure endpoints and custom base URLs are customer data: check them against the egress settings before a key is
    /// sent there. (OpenAI's base URL is the operator's own setting.)
    fn egress_allows(&self, step: &Step) -> bool {
        // The operator's OpenAI base URL and Anthropic's and Gemini's own APIs are not customer data.
        let provider_default = match step.provider {
            ProviderKind::Openai => true,
            ProviderKind::Anthropic => step.endpoint == plan::ANTHROPIC_BASE_URL,
            ProviderKind::Gemini => step.endpoint == plan::GEMINI_BASE_URL,
            ProviderKind::Azure | ProviderKind::Custom => false,
        };
        if provider_default {
            return true;
        }
        match url::Url::parse(&step.url)
            .map_err(|_| crate::egress::EgressError::Unparsable)
            .and_then(|u| self.egress.check_target(&u))
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(endpoint = %step.endpoint, reason = %e, "upstream refused by the egress policy");
                false
            }
        }
    }

    fn on_success(&self, set: &OpenKeySet, key: &crate::vault::ProviderKey, breaker: &TargetKey) {
        self.breakers.record_success(breaker);
        self.usage.touch(key.id);
        if self.keys.recovered(key) {
            let (vault, set_id, key_id) = (self.vault.clone(), set.key_set_id, key.id);
            tokio::spawn(
                async move {
                    if let Err(e) = vault.mark_key_active(set_id, key_id).await {
                        tracing::warn!(error = %e, "could not mark a key active again");
                    }
                }
                .in_current_span(),
            );
        }
    }

    /// The metric label of a model: its catalog name, or `other`.
    fn model_label(&self, model: &str) -> &'static str {
        self.metrics.model_label(self.catalog.label(model))
    }
}

/// Building blocks for the engine's unit tests: an engine whose database is never reached, a key set, a request.
#[cfg(test)]
mod testing {
    use super::*;
    use crate::vault::{KeyTarget, Policy, Provider, ProviderKey};
    use secrecy::SecretString;
    use uuid::Uuid;

    pub(super) fn engine(settings: EngineSettings) -> Arc<Engine> {
        let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let keyring = crate::config::MasterKeyring::from_keys(vec![(1, crate::config::Secret32::random())]).unwrap();
        let peppers = crate::config::Keyring::from_keys(vec![(1, crate::config::Secret32::random())]).unwrap();
        let vault = Vault::new(pool, Arc::new(keyring), &peppers);
        let (events, _) = EventSink::channel(16);
        Arc::new(Engine::new(settings, EgressPolicy::new(Vec::new(), true), vault, events).unwrap())
    }

    pub(super) fn key_set(keys: usize, policy: Policy) -> Arc<OpenKeySet> {
        let keys = (0..keys)
            .map(|i| ProviderKey {
                id: Uuid::new_v4(),
                provider: Provider::Openai,
                secret: SecretString::from(format!("sk-unit-{i:032}")),
                target: KeyTarget::default(),
                invalid_since: None,
            })
            .collect();
        Arc::new(OpenKeySet::new(Uuid::new_v4(), policy, keys))
    }

    pub(super) fn request(model: &str) -> Arc<GatewayRequest> {
        let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        Arc::new(GatewayRequest::new(Endpoint::Chat, body))
    }

    pub(super) fn cx<'a>(set: &'a Arc<OpenKeySet>, req: &'a Arc<GatewayRequest>) -> Cx<'a> {
        let started = Instant::now();
        Cx { set, req, started, deadline: started + Duration::from_secs(60), hedge: None, caching: false }
    }

    pub(super) fn plan(engine: &Engine, set: &OpenKeySet, req: &GatewayRequest) -> Arc<Plan> {
        let input = PlanInput {
            endpoint: req.endpoint,
            model: &req.model,
            fallbacks: req.fallbacks.as_deref(),
            openai_base_url: "https://api.openai.com/v1",
            only_key: None,
        };
        engine.plan_for(set, &input)
    }
}
