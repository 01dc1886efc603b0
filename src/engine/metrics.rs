//! The engine's Prometheus metrics (OpenMetrics text from `prometheus-client`). Every label is low-cardinality: outcomes
//! and classes are closed enums, providers are three, and `model` is a catalog model or `other` — never a raw string
//! from a request.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::classify::FailureClass;
use super::events::{AttemptResult, RequestOutcome, Usage};
use super::plan::ProviderKind;

/// Label of models outside the catalog.
pub const OTHER_MODEL: &str = super::catalog::OTHER;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
    model: &'static str,
    provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
    model: &'static str,
    provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
    model: &'static str,
    provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    kind: &'static str,
    model: &'static str,
    provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuardLabels {
    guard: &'static str,
}

/// Bucket bounds (seconds) of the gateway-overhead histogram.
const OVERHEAD_BUCKETS: [f64; 12] =
    [0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.25];

pub struct Metrics {
    registry: Registry,
    /// Catalog model names → their interned label.
    models: HashMap<String, &'static str>,
    requests: Family<OutcomeLabels, Counter>,
    attempts: Family<ClassLabels, Counter>,
    fallbacks: Family<ReasonLabels, Counter>,
    upstream_tokens: Family<TokenLabels, Counter>,
    hedges: Counter,
    stream_rescues: Counter,
    stream_malformed_chunks: Counter,
    events_dropped: Counter,
    in_flight: Gauge,
    queued: Gauge,
    shed: Counter,
    breakers: Family<StateLabels, Gauge>,
    overhead: Histogram,
    cache_lookups: Family<ResultLabels, Counter>,
    cache_writes: Family<ResultLabels, Counter>,
    cache_guard_rejections: Family<GuardLabels, Counter>,
}

/// Model labels live as long as the process: interned once per distinct catalog name (a finite set).
fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(existing) = names.get(name) {
        return existing;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

fn provider_label(provider: Option<ProviderKind>) -> &'static str {
    provider.map_or("none", ProviderKind::as_str)
}

impl Metrics {
    /// `catalog_models`: the names that may appear as `model` labels.
    pub fn new(catalog_models: &[&str]) -> Self {
        let mut registry = Registry::with_prefix("reliablegpt");
        let m = Self {
            models: catalog_models.iter().map(|n| ((*n).to_owned(), intern(n))).collect(),
            requests: Family::default(),
            attempts: Family::default(),
            fallbacks: Family::default(),
            upstream_tokens: Family::default(),
            hedges: Counter::default(),
            stream_rescues: Counter::default(),
            stream_malformed_chunks: Counter::default(),
            events_dropped: Counter::default(),
            in_flight: Gauge::default(),
            queued: Gauge::default(),
            shed: Counter::default(),
            breakers: Family::default(),
            overhead: Histogram::new(OVERHEAD_BUCKETS),
            cache_lookups: Family::default(),
            cache_writes: Family::default(),
            cache_guard_rejections: Family::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Gateway requests by final outcome", m.requests.clone());
        registry.register(
            "upstream_attempts",
            "Upstream attempts by result class (breaker_open: skipped without a call; cancelled: a hedge loser)",
            m.attempts.clone(),
        );
        registry.register(
            "fallbacks",
            "Requests answered by another target than the first, by the first failure's class",
            m.fallbacks.clone(),
        );
        registry.register(
            "upstream_tokens",
            "Tokens reported by upstreams across every attempt (what the providers bill)",
            m.upstream_tokens.clone(),
        );
        registry.register("hedges", "Hedged attempts started because the first target was slow", m.hedges.clone());
        registry.register(
            "stream_rescues",
            "Streams finished on another target after dying midway",
            m.stream_rescues.clone(),
        );
        registry.register(
            "stream_malformed_chunks",
            "Malformed upstream stream chunks dropped",
            m.stream_malformed_chunks.clone(),
        );
        registry.register(
            "events_dropped",
            "Engine events dropped because the buffer was full",
            m.events_dropped.clone(),
        );
        registry.register("requests_in_flight", "Gateway requests being served", m.in_flight.clone());
        registry.register("requests_queued", "Requests waiting for their key set's max_concurrency", m.queued.clone());
        registry.register("requests_shed", "Requests refused with 503 after waiting max_queue_ms", m.shed.clone());
        registry.register("circuit_breakers", "Circuit breakers not closed, by state", m.breakers.clone());
        registry.register(
            "gateway_overhead_seconds",
            "Time spent in reliablegpt itself per gateway request (auth, parsing, logging included), excluding upstream time and deliberate waits",
            m.overhead.clone(),
        );
        registry.register(
            "cache_lookups",
            "Semantic cache lookups by result (exact_hit, semantic_hit, miss, busy: no embedding slot, error, timeout)",
            m.cache_lookups.clone(),
        );
        registry.register(
            "cache_writes",
            "Cache write-through jobs by result (queued, dropped: queue full, stored, failed)",
            m.cache_writes.clone(),
        );
        registry.register(
            "cache_guard_rejections",
            "Semantic cache candidates above the threshold that a hit guard refused, by guard",
            m.cache_guard_rejections.clone(),
        );
        Self { registry, ..m }
    }

    /// The `model` label of a catalog model's name (else `other`).
    pub fn model_label(&self, catalog_name: &str) -> &'static str {
        self.models.get(catalog_name).copied().unwrap_or(OTHER_MODEL)
    }

    pub fn request(&self, outcome: RequestOutcome, model: &'static str, provider: Option<ProviderKind>) {
        let labels = OutcomeLabels { outcome: outcome.as_str(), model, provider: provider_label(provider) };
        self.requests.get_or_create(&labels).inc();
    }

    pub fn attempt(&self, result: AttemptResult, model: &'static str, provider: ProviderKind) {
        let labels = ClassLabels { class: result.as_str(), model, provider: provider.as_str() };
        self.attempts.get_or_create(&labels).inc();
    }

    pub fn fallback(&self, reason: FailureClass, model: &'static str, provider: ProviderKind) {
        let labels = ReasonLabels { reason: reason.as_str(), model, provider: provider.as_str() };
        self.fallbacks.get_or_create(&labels).inc();
    }

    pub fn upstream_tokens(&self, usage: Usage, model: &'static str, provider: ProviderKind) {
        let (prompt, completion) = (usage.prompt_tokens, usage.completion_tokens);
        for (kind, n) in [("prompt", prompt), ("completion", completion)] {
            if n > 0 {
                let labels = TokenLabels { kind, model, provider: provider.as_str() };
                self.upstream_tokens.get_or_create(&labels).inc_by(n);
            }
        }
    }

    pub fn hedge_started(&self) {
        self.hedges.inc();
    }

    pub fn stream_rescued(&self) {
        self.stream_rescues.inc();
    }

    pub fn malformed_chunk(&self) {
        self.stream_malformed_chunks.inc();
    }

    pub fn event_dropped(&self) {
        self.events_dropped.inc();
    }

    pub fn in_flight(&self, delta: i64) {
        self.in_flight.inc_by(delta);
    }

    pub fn queued(&self, delta: i64) {
        self.queued.inc_by(delta);
    }

    pub fn shed(&self) {
        self.shed.inc();
    }

    /// `result`: one of a closed set of literals (see the metric's help).
    pub fn cache_lookup(&self, result: &'static str) {
        self.cache_lookups.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn cache_write(&self, result: &'static str) {
        self.cache_writes.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn cache_guard_rejected(&self, guard: &'static str) {
        self.cache_guard_rejections.get_or_create(&GuardLabels { guard }).inc();
    }

    pub fn overhead(&self, spent: Duration) {
        self.overhead.observe(spent.as_secs_f64());
    }

    /// OpenMetrics text; `breakers_*` are sampled by the caller at scrape time.
    pub fn render(&self, breakers_open: usize, breakers_half_open: usize) -> String {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.breakers.get_or_create(&StateLabels { state: "open" }).set(gauge(breakers_open));
        self.breakers.get_or_create(&StateLabels { state: "half_open" }).set(gauge(breakers_half_open));
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_and_rendered() {
        let m = Metrics::new(&["gpt-4o"]);
        let known = m.model_label("gpt-4o");
        let unknown = m.model_label("my-finetune-123");
        assert_eq!((known, unknown, m.model_label("other")), ("gpt-4o", "other", "other"));
        m.request(RequestOutcome::FallbackSuccess, known, Some(ProviderKind::Openai));
        m.request(RequestOutcome::Shed, OTHER_MODEL, None);
        m.attempt(AttemptResult::Failed(FailureClass::Transient), known, ProviderKind::Azure);
        m.attempt(AttemptResult::Success, unknown, ProviderKind::Openai);
        m.fallback(FailureClass::BreakerOpen, known, ProviderKind::Openai);
        m.upstream_tokens(Usage { prompt_tokens: 7, completion_tokens: 0 }, known, ProviderKind::Openai);
        m.overhead(Duration::from_micros(80));
        m.overhead(Duration::from_millis(200));
        let text = m.render(1, 0);
        for line in [
            r#"reliablegpt_requests_total{outcome="fallback_success",model="gpt-4o",provider="openai"} 1"#,
            r#"reliablegpt_requests_total{outcome="shed",model="other",provider="none"} 1"#,
            r#"reliablegpt_upstream_attempts_total{class="transient",model="gpt-4o",provider="azure"} 1"#,
            r#"reliablegpt_upstream_attempts_total{class="success",model="other",provider="openai"} 1"#,
            r#"reliablegpt_fallbacks_total{reason="breaker_open",model="gpt-4o",provider="openai"} 1"#,
            r#"reliablegpt_upstream_tokens_total{kind="prompt",model="gpt-4o",provider="openai"} 7"#,
            r#"reliablegpt_gateway_overhead_seconds_bucket{le="0.0001"} 1"#,
            r#"reliablegpt_gateway_overhead_seconds_count 2"#,
            r#"reliablegpt_circuit_breakers{state="open"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("completion\",model=\"gpt-4o\""), "zero counts are not created: {text}");
    }

    #[test]
    fn interning_returns_one_string_per_name() {
        let a = intern("model-a");
        let b = intern(&String::from("model-a"));
        assert!(std::ptr::eq(a, b));
    }
}
