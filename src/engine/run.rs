//! Per-request state: what the request is ([`Cx`], fixed) and what it has learnt so far ([`Run`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use uuid::Uuid;

use super::classify::FailureClass;
use super::events::Usage;
use super::plan::Step;
use super::request::GatewayRequest;
use crate::vault::{OpenKeySet, ProviderKey};

/// What a request is, fixed for its whole life (a stream's pump builds its own for rescues, with a fresh deadline).
pub(super) struct Cx<'a> {
    pub set: &'a Arc<OpenKeySet>,
    pub req: &'a Arc<GatewayRequest>,
    pub started: Instant,
    /// Bounds a non-streaming request, and a stream until its first event.
    pub deadline: Instant,
    pub hedge: Option<Duration>,
    pub caching: bool,
}

/// What one request has learnt so far.
#[derive(Debug, Default)]
pub(super) struct Run {
    /// Upstream calls made (hedges and rescues included).
    pub attempts: u32,
    /// The class of the first failure or skip: the fallback reason.
    pub first_failure: Option<FailureClass>,
    /// Every failure and skip, described for the total-failure message.
    pub failures: Vec<(FailureClass, String)>,
    /// Keys that failed with a credential error: never tried again by this request.
    pub burned_keys: Vec<Uuid>,
    /// After a context-length error: only models with a larger window than this are worth trying.
    pub context_floor: Option<u32>,
    pub context_error: Option<(u16, Bytes)>,
    pub deadline_hit: bool,
    /// Time spent waiting on upstreams or sleeping on purpose (excluded from the overhead metric).
    pub waited: Duration,
    /// Prompt token estimate when it differs from the request's own ([`Run::estimate`]): a rescue adds the partial
    /// answer it sends along; tests set one.
    pub estimate: Option<u32>,
    /// Tokens upstreams reported across all attempts.
    pub billed: Usage,
}

impl Run {
    #[cfg(test)]
    pub fn new(estimate: u32) -> Self {
        Self { estimate: Some(estimate), ..Self::default() }
    }

    /// The prompt token estimate of this run: the request's own unless something changed it.
    pub fn estimate(&self, req: &GatewayRequest) -> u32 {
        self.estimate.unwrap_or_else(|| req.prompt_estimate())
    }

    pub fn burned(&self, key: Uuid) -> bool {
        self.burned_keys.contains(&key)
    }

    /// Remembers a failed attempt or a skip for the total-failure message (model, provider, masked key, class).
    pub fn note(&mut self, step: &Step, key: &ProviderKey, class: FailureClass, detail: &str) {
        self.first_failure.get_or_insert(class);
        let masked = crate::vault::input::mask(secrecy::ExposeSecret::expose_secret(&key.secret));
        self.failures.push((
            class,
            format!("{} via {} key {masked}: {} ({detail})", step.model, step.provider.as_str(), class.as_str()),
        ));
    }
}
