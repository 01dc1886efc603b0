//! The fallback engine: plans targets, makes attempts, classifies failures and decides what to do next, so that a
//! request survives every failure a provider can produce.

mod breaker;
pub mod catalog;
pub mod classify;
mod decide;
pub mod events;
mod health;
mod hedge;
mod pacing;
pub mod plan;
mod reply;
pub mod settings;
use decide::Next;
mod stream;
pub mod upstream;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::config::EngineSettings;
use crate::egress::EgressPolicy;
use crate::vault::{OpenKeySet, ProviderKey, Vault};
pub use breaker::{Admission, BreakerState, Breakers, TargetKey};
use catalog::{Catalog, estimate_prompt_tokens};
pub use classify::FailureClass;
use events::{AttemptEvent, EventSink, Metrics, RequestOutcome};
use health::{KeyHealth, UsageRecorder};
pub use plan::{Endpoint, ProviderKind, Step};
use upstream::{AttemptFailure, AttemptOk, Limits};

/// One gateway request, parsed at the edge.
#[derive(Debug)]
pub struct GatewayRequest {
    pub endpoint: Endpoint,
    /// The client's body, forwarded as sent except for `model` (an object with a string `model`).
    pub body: Value,
    /// The same body as received: sent byte for byte while the model is the requested one.
    pub raw: Bytes,
    pub model: String,
    pub stream: bool,
    pub fallbacks: Option<Vec<String>>,
    pub instance: Option<String>,
    pub timeout: Option<Duration>,
    /// Overrides the policy's `hedge_ms` (`x-reliablegpt-hedge-ms`).
    pub hedge: Option<Duration>,
}

/// Who answered, for the response headers.
#[derive(Debug, Clone)]
pub struct Served {
    pub model: String,
    pub provider: ProviderKind,
    pub attempts: u32,
    pub fallback_reason: Option<FailureClass>,
}

pub enum Reply {
    /// The upstream's answer: a success, or (for caller faults, content filters and unfittable prompts) its error
    /// status and body unchanged.
    Upstream {
        status: u16,
        body: Bytes,
        served: Served,
    },
    /// A stream: the first event, then the rest as it arrives.
    Stream {
        first: Bytes,
        rest: mpsc::Receiver<Bytes>,
        served: Served,
    },
    /// Every target failed and the policy asked for its `graceful_string` instead of an error.
    Graceful {
        body: Value,
        attempts: u32,
    },
    Failed {
        status: u16,
        code: &'static str,
        message: String,
        attempts: u32,
    },
}

pub struct Engine {
    client: reqwest::Client,
    settings: EngineSettings,
    catalog: Catalog,
    breakers: Breakers,
    keys: KeyHealth,
    usage: UsageRecorder,
    pacer: pacing::Pacer,
    events: EventSink,
    pub metrics: Arc<Metrics>,
    vault: Vault,
    egress: EgressPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("model catalog {path}: {reason}")]
    Catalog { path: String, reason: String },
}

/// What one request has learnt so far.
#[derive(Default)]
struct Run {
    attempts: u32,
    first_failure: Option<FailureClass>,
    failures: Vec<(FailureClass, String)>,
    burned_keys: HashSet<Uuid>,
    /// After a context-length error: only models with a larger window than this are worth trying.
    context_floor: Option<u32>,
    context_error: Option<(u16, Bytes)>,
    /// Time spent waiting on upstreams or sleeping on purpose (excluded from the overhead metric).
    waited: Duration,
    /// Pre-flight prompt token estimate.
    estimate: u32,
}

impl Run {
    /// Remembers a failed attempt for the total-failure message (model, provider, masked key, class) and logs it.
    fn note(&mut self, step: &Step, key: &ProviderKey, failure: &AttemptFailure) {
        self.first_failure.get_or_insert(failure.class);
        let masked = crate::vault::input::mask(secrecy::ExposeSecret::expose_secret(&key.secret));
        self.failures.push((
            failure.class,
            format!(
                "{} via {} key {masked}: {} ({})",
                step.model,
                step.provider.as_str(),
                failure.class.as_str(),
                failure.detail
            ),
        ));
        tracing::info!(
            model = %step.model,
            provider = step.provider.as_str(),
            key_id = %key.id,
            class = failure.class.as_str(),
            status = failure.status,
            "upstream attempt failed"
        );
    }
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
            client: upstream::build_client(&settings, egress.clone())?,
            egress,
            breakers: Breakers::new(settings.breaker_failures, settings.breaker_open),
            keys: KeyHealth::new(settings.key_retry_after),
            usage: UsageRecorder::default(),
            pacer: pacing::Pacer::default(),
            settings,
            catalog,
            events,
            metrics: Arc::new(Metrics::default()),
            vault,
        })
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

    /// Background work: flushing `last_used_at` of keys every few seconds.
    pub fn spawn_background(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let used = engine.usage.drain();
                if !used.is_empty()
                    && let Err(e) = engine.vault.touch_keys(&used).await
                {
                    tracing::warn!(error = %e, "could not record key usage");
                }
            }
        })
    }

    pub async fn serve(self: &Arc<Self>, set: Arc<OpenKeySet>, req: GatewayRequest) -> Reply {
        let started = Instant::now();
        let deadline = started + req.timeout.unwrap_or(self.settings.request_timeout);
        let steps = plan::plan(
            &set,
            &plan::PlanInput {
                endpoint: req.endpoint,
                model: &req.model,
                fallbacks: req.fallbacks.as_deref(),
                openai_base_url: &self.settings.openai_base_url,
            },
            &self.catalog,
        );
        let hedge = req.hedge.or(set.policy.hedge_ms.map(|ms| Duration::from_millis(u64::from(ms))));
        let mut run = Run { estimate: estimate_prompt_tokens(&req.body), ..Run::default() };

        for (index, step) in steps.iter().enumerate() {
            if !self.fits(step, index, run.estimate, run.context_floor) || !self.egress_allows(step) {
                continue;
            }
            'keys: for &key_index in &step.keys {
                let Some(key) = set.keys.get(key_index) else { continue };
                if run.burned_keys.contains(&key.id) || !self.keys.usable(key, set.loaded_at) {
                    continue;
                }
                let target = TargetKey { endpoint: step.endpoint.clone(), model: step.model.clone(), key_id: key.id };
                let admission = self.breakers.admit(&target);
                if admission == Admission::Rejected {
                    continue;
                }
                let mut retries = 0;
                loop {
                    if Instant::now() >= deadline {
                        self.breakers.release_probe(&target);
                        return self.total_failure(&set, &req, run, true);
                    }
                    if !self.pace(&set, step, deadline, &mut run).await {
                        self.breakers.release_probe(&target);
                        break 'keys;
                    }
                    let hedge = if retries == 0 { hedge } else { None };
                    let t0 = Instant::now();
                    let (result, answered) =
                        self.attempt(&set, &req, &steps, (index, key_index), hedge, deadline, &mut run).await;
                    run.waited += t0.elapsed();
                    run.attempts += 1;
                    let (a_step, a_key) = (&steps[answered.0], &set.keys[answered.1]);
                    let class = result.as_ref().err().map(|f| f.class);
                    self.emit(&set, &req, a_step, a_key, class, &result, t0.elapsed());
                    let failure = match result {
                        Ok(ok) => {
                            if answered.0 != index {
                                // A hedge won: the primary was cancelled.
                                self.breakers.release_probe(&target);
                                run.first_failure.get_or_insert(FailureClass::Timeout);
                            }
                            return self.succeed(&set, req, steps, answered, ok, run, started);
                        }
                        Err(failure) => failure,
                    };
                    run.note(step, key, &failure);
                    match self.decide(&set, key, &target, admission, &failure, retries, deadline, &mut run) {
                        Next::Retry(wait) => {
                            tokio::time::sleep(wait).await;
                            run.waited += wait;
                            retries += 1;
                        }
                        Next::RotateKey => continue 'keys,
                        Next::MoveOn => break 'keys,
                        Next::ReturnUpstream => {
                            self.metrics.request(RequestOutcome::Passthrough);
                            let served = Served {
                                model: step.model.clone(),
                                provider: step.provider,
                                attempts: run.attempts,
                                fallback_reason: None,
                            };
                            let status = failure.status.unwrap_or(502);
                            return Reply::Upstream { status, body: failure.body.unwrap_or_default(), served };
                        }
                    }
                }
            }
        }
        self.total_failure(&set, &req, run, Instant::now() >= deadline)
    }

    /// Waits for the model's policy budget (`model_limits`), if it has one. False: over budget for longer than the
    /// queue allows, so move on.
    async fn pace(&self, set: &OpenKeySet, step: &Step, deadline: Instant, run: &mut Run) -> bool {
        let Some(limit) = set.policy.model_limits.get(&step.model) else { return true };
        let max_queue = Duration::from_millis(u64::from(
            set.policy.max_queue_ms.unwrap_or(crate::vault::input::DEFAULT_MAX_QUEUE_MS),
        ))
        .min(deadline.saturating_duration_since(Instant::now()));
        match self.pacer.reserve(set.key_set_id, &step.model, *limit, run.estimate, max_queue) {
            Some(wait) => {
                tokio::time::sleep(wait).await;
                run.waited += wait;
                true
            }
            None => {
                run.failures.push((
                    FailureClass::RateLimited,
                    format!("{}: over its policy budget (model_limits)", step.model),
                ));
                run.first_failure.get_or_insert(FailureClass::RateLimited);
                false
            }
        }
    }

    /// One attempt at `at` = (step, key), raced against a hedge on the next target when `hedge` is set and the first
    /// has sent nothing by then. Returns the result and which (step, key) it came from.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        set: &OpenKeySet,
        req: &GatewayRequest,
        steps: &[Step],
        at: (usize, usize),
        hedge: Option<Duration>,
        deadline: Instant,
        run: &mut Run,
    ) -> (Result<AttemptOk, AttemptFailure>, (usize, usize)) {
        let (step, key) = (&steps[at.0], &set.keys[at.1]);
        let limits = self.limits(deadline);
        let primary = upstream::attempt(&self.client, step, key, req.body_for(step), req.stream, &limits);
        let Some((after, h_at)) = hedge.and_then(|h| self.hedge_target(set, steps, at.0, run).map(|t| (h, t))) else {
            return (primary.await, at);
        };
        let h_step = steps[h_at.0].clone();
        let h_key = set.keys[h_at.1].clone_for_attempt();
        let h_body = req.body_for(&h_step);
        let raced = hedge::race(primary, after, || {
            let (client, limits, stream) = (self.client.clone(), self.limits(deadline), req.stream);
            async move { upstream::attempt(&client, &h_step, &h_key, h_body, stream, &limits).await }
        })
        .await;
        if raced.hedge_started {
            run.attempts += 1;
            self.metrics.hedges.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(f) = &raced.hedge_failure {
            self.metrics.attempt(Some(f.class));
        }
        (raced.result, if raced.hedge_won { h_at } else { at })
    }

    /// Records a success and turns it into the reply (for a stream: starts the pump that forwards and rescues it).
    #[allow(clippy::too_many_arguments)]
    fn succeed(
        self: &Arc<Self>,
        set: &Arc<OpenKeySet>,
        req: GatewayRequest,
        steps: Vec<Step>,
        answered: (usize, usize),
        ok: AttemptOk,
        run: Run,
        started: Instant,
    ) -> Reply {
        let (step, key) = (&steps[answered.0], &set.keys[answered.1]);
        let target = TargetKey { endpoint: step.endpoint.clone(), model: step.model.clone(), key_id: key.id };
        self.on_success(set, key, &target);
        let served = Served {
            model: step.model.clone(),
            provider: step.provider,
            attempts: run.attempts,
            fallback_reason: run.first_failure,
        };
        if run.first_failure.is_some() {
            self.metrics.request(RequestOutcome::Fallback);
            self.metrics.fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.metrics.request(RequestOutcome::Success);
        }
        self.metrics.overhead(started.elapsed().saturating_sub(run.waited));
        match ok {
            AttemptOk::Body { status, body } => Reply::Upstream { status, body, served },
            AttemptOk::Stream { reader, first } => {
                let (tx, rx) = mpsc::channel(64);
                let job = stream::StreamJob {
                    engine: self.clone(),
                    set: set.clone(),
                    endpoint: req.endpoint,
                    body: req.body,
                    steps,
                    next_step: answered.0 + 1,
                    tx,
                };
                let first_bytes = first.raw.clone();
                tokio::spawn(job.pump(reader, first));
                Reply::Stream { first: first_bytes, rest: rx, served }
            }
        }
    }

    /// Azure endpoints and custom base URLs are customer data: check them against today's egress settings before a key
    /// is sent there. (OpenAI's base URL is the operator's own setting.)
    fn egress_allows(&self, step: &Step) -> bool {
        if step.provider == ProviderKind::Openai {
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

    /// Time limits of an attempt starting now.
    fn limits(&self, deadline: Instant) -> Limits {
        Limits {
            first_byte_by: (Instant::now() + self.settings.first_byte_timeout).min(deadline),
            deadline,
            idle: self.settings.stream_idle_timeout,
        }
    }

    /// The target a hedge would use: the next step that fits, with a usable key whose breaker is closed.
    fn hedge_target(&self, set: &OpenKeySet, steps: &[Step], index: usize, run: &Run) -> Option<(usize, usize)> {
        steps.iter().enumerate().skip(index + 1).find_map(|(i, step)| {
            if !self.fits(step, i, run.estimate, run.context_floor) || !self.egress_allows(step) {
                return None;
            }
            step.keys
                .iter()
                .copied()
                .find(|&k| {
                    let Some(key) = set.keys.get(k) else { return false };
                    let target =
                        TargetKey { endpoint: step.endpoint.clone(), model: step.model.clone(), key_id: key.id };
                    !run.burned_keys.contains(&key.id)
                        && key.invalid_since.is_none()
                        && self.breakers.state(&target) == BreakerState::Closed
                })
                .map(|k| (i, k))
        })
    }

    /// A fallback is skipped when the catalog says the prompt cannot fit, and after a context-length error only larger
    /// windows are tried. Unknown models are always tried: the upstream has the last word.
    fn fits(&self, step: &Step, index: usize, estimate: u32, floor: Option<u32>) -> bool {
        let Some(window) = self.catalog.context_window(&step.model) else { return true };
        if let Some(floor) = floor
            && window <= floor
        {
            return false;
        }
        index == 0 || estimate <= window
    }

    fn on_success(&self, set: &OpenKeySet, key: &ProviderKey, target: &TargetKey) {
        self.breakers.record_success(target);
        self.usage.touch(key.id);
        if self.keys.recovered(key) {
            let (vault, set_id, key_id) = (self.vault.clone(), set.key_set_id, key.id);
            tokio::spawn(async move {
                let _ = vault.mark_key_active(set_id, key_id).await;
                vault.evict_cached(set_id);
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        set: &OpenKeySet,
        req: &GatewayRequest,
        step: &Step,
        key: &ProviderKey,
        class: Option<FailureClass>,
        result: &Result<AttemptOk, AttemptFailure>,
        latency: Duration,
    ) {
        self.metrics.attempt(class);
        let status = match result {
            Ok(AttemptOk::Body { status, .. }) => Some(*status),
            Ok(AttemptOk::Stream { .. }) => Some(200),
            Err(f) => f.status,
        };
        self.events.emit(
            AttemptEvent {
                key_set_id: set.key_set_id,
                instance: req.instance.clone(),
                endpoint: req.endpoint,
                model: step.model.clone(),
                provider: step.provider,
                key_id: key.id,
                class,
                status,
                latency,
            },
            &self.metrics,
        );
    }
}

impl GatewayRequest {
    /// The body for one step: the client's bytes untouched when the step asks for the requested model.
    fn body_for(&self, step: &Step) -> Bytes {
        if step.model == self.model { self.raw.clone() } else { body_for(&self.body, step, None) }
    }
}

/// The body for one step: the client's body with `model` set, and optionally an assistant prefill to continue from.
pub(crate) fn body_for(body: &Value, step: &Step, prefill: Option<&str>) -> Bytes {
    let mut body = body.clone();
    if let Some(map) = body.as_object_mut() {
        map.insert("model".to_owned(), Value::String(step.model.clone()));
        if let Some(text) = prefill {
            if let Some(Value::Array(messages)) = map.get_mut("messages") {
                messages.push(json!({"role": "assistant", "content": text}));
            } else if let Some(Value::String(prompt)) = map.get_mut("prompt") {
                prompt.push_str(text);
            }
        }
    }
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}
