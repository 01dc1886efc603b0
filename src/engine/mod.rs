//! The fallback engine: plans targets, makes attempts, classifies failures and decides what to do next, so that a
//! request survives every failure a provider can produce.

mod breaker;
pub mod catalog;
pub mod classify;
pub mod events;
mod health;
mod hedge;
mod pacing;
pub mod plan;
mod stream;
pub mod upstream;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use rand::Rng;
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
}

impl Engine {
    pub fn new(
        settings: EngineSettings,
        egress: EgressPolicy,
        vault: Vault,
        events: EventSink,
    ) -> Result<Self, EngineError> {
        let catalog = match &settings.model_catalog {
            None => Catalog::shipped(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| EngineError::Catalog { path: path.clone(), reason: e.kind().to_string() })?;
                Catalog::parse(&text).map_err(|reason| EngineError::Catalog { path: path.clone(), reason })?
            }
        };
        Ok(Self {
            client: upstream::build_client(&settings, egress)?,
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
        let estimate = estimate_prompt_tokens(&req.body);
        let hedge = req.hedge.or(set.policy.hedge_ms.map(|ms| Duration::from_millis(u64::from(ms))));
        let mut run = Run::default();

        for (index, step) in steps.iter().enumerate() {
            if !self.fits(step, index, estimate, run.context_floor) {
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
                    let now = Instant::now();
                    if now >= deadline {
                        self.breakers.release_probe(&target);
                        return self.total_failure(&set, &req, run, true);
                    }
                    if let Some(limit) = set.policy.model_limits.get(&step.model) {
                        let max_queue = Duration::from_millis(u64::from(
                            set.policy.max_queue_ms.unwrap_or(crate::vault::input::DEFAULT_MAX_QUEUE_MS),
                        ))
                        .min(deadline.saturating_duration_since(now));
                        match self.pacer.reserve(set.key_set_id, &step.model, *limit, estimate, max_queue) {
                            Some(wait) => {
                                tokio::time::sleep(wait).await;
                                run.waited += wait;
                            }
                            None => {
                                self.breakers.release_probe(&target);
                                run.failures.push((
                                    FailureClass::RateLimited,
                                    format!("{}: over its policy budget (model_limits)", step.model),
                                ));
                                run.first_failure.get_or_insert(FailureClass::RateLimited);
                                break 'keys;
                            }
                        }
                    }
                    let limits = self.limits(deadline);
                    let t0 = Instant::now();
                    let primary = upstream::attempt(&self.client, step, key, req.body_for(step), req.stream, &limits);
                    let hedge_target = if retries == 0 {
                        hedge.and_then(|h| self.hedge_target(&set, &steps, index, &run).map(|t| (h, t)))
                    } else {
                        None
                    };
                    let (result, answered) = match hedge_target {
                        None => (primary.await, (index, key_index)),
                        Some((after, (h_index, h_key))) => {
                            let h_step = &steps[h_index];
                            let h_body = req.body_for(h_step);
                            let raced = hedge::race(primary, after, || {
                                let h_limits = self.limits(deadline);
                                let client = self.client.clone();
                                let h_step = h_step.clone();
                                let h_secret = set.keys[h_key].clone_for_attempt();
                                let stream = req.stream;
                                async move {
                                    upstream::attempt(&client, &h_step, &h_secret, h_body, stream, &h_limits).await
                                }
                            })
                            .await;
                            if raced.hedge_started {
                                run.attempts += 1;
                                self.metrics.hedges.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            if let Some(f) = &raced.hedge_failure {
                                self.metrics.attempt(Some(f.class));
                            }
                            let answered = if raced.hedge_won { (h_index, h_key) } else { (index, key_index) };
                            (raced.result, answered)
                        }
                    };
                    run.waited += t0.elapsed();
                    run.attempts += 1;
                    let (a_step, a_key) = (&steps[answered.0], &set.keys[answered.1]);
                    let class = result.as_ref().err().map(|f| f.class);
                    self.emit(&set, &req, a_step, a_key, class, &result, t0.elapsed());
                    match result {
                        Ok(ok) => {
                            let a_target = TargetKey {
                                endpoint: a_step.endpoint.clone(),
                                model: a_step.model.clone(),
                                key_id: a_key.id,
                            };
                            if answered.0 != index {
                                self.breakers.release_probe(&target);
                                run.first_failure.get_or_insert(FailureClass::Timeout);
                            }
                            self.on_success(&set, a_key, &a_target);
                            let served = Served {
                                model: a_step.model.clone(),
                                provider: a_step.provider,
                                attempts: run.attempts,
                                fallback_reason: run.first_failure,
                            };
                            self.metrics.request(if run.first_failure.is_some() {
                                RequestOutcome::Fallback
                            } else {
                                RequestOutcome::Success
                            });
                            if run.first_failure.is_some() {
                                self.metrics.fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            self.metrics.overhead(started.elapsed().saturating_sub(run.waited));
                            return match ok {
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
                            };
                        }
                        Err(failure) => {
                            run.first_failure.get_or_insert(failure.class);
                            run.failures.push((
                                failure.class,
                                format!(
                                    "{} via {} key {}: {} ({})",
                                    step.model,
                                    step.provider.as_str(),
                                    crate::vault::input::mask(secrecy::ExposeSecret::expose_secret(&key.secret)),
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
                                    return Reply::Upstream {
                                        status: failure.status.unwrap_or(502),
                                        body: failure.body.unwrap_or_default(),
                                        served,
                                    };
                                }
                            }
                        }
                    }
                }
            }
        }
        self.total_failure(&set, &req, run, Instant::now() >= deadline)
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
        let estimate = 0;
        steps.iter().enumerate().skip(index + 1).find_map(|(i, step)| {
            if !self.fits(step, i, estimate, run.context_floor) {
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

    #[allow(clippy::too_many_arguments)]
    fn decide(
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

    fn total_failure(&self, set: &OpenKeySet, req: &GatewayRequest, run: Run, deadline_hit: bool) -> Reply {
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

/// What the engine does after a failed attempt.
enum Next {
    Retry(Duration),
    RotateKey,
    MoveOn,
    ReturnUpstream,
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
