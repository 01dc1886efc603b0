//! Attempt events (for the alerts worker) and the engine's Prometheus metrics. The request path never waits on either:
//! events go through a bounded channel with `try_send`, overflow is counted; metrics are atomics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::classify::FailureClass;
use super::plan::{Endpoint, ProviderKind};

/// One upstream attempt, as the alerts module will count it.
#[derive(Debug, Clone)]
pub struct AttemptEvent {
    pub key_set_id: Uuid,
    pub instance: Option<String>,
    pub endpoint: Endpoint,
    pub model: String,
    pub provider: ProviderKind,
    pub key_id: Uuid,
    /// `None` on success.
    pub class: Option<FailureClass>,
    pub status: Option<u16>,
    pub latency: Duration,
}

pub const EVENT_BUFFER: usize = 10_000;

/// The sending half, cloned into the engine.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<AttemptEvent>,
}

impl EventSink {
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<AttemptEvent>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    pub fn emit(&self, event: AttemptEvent, metrics: &Metrics) {
        if self.tx.try_send(event).is_err() {
            metrics.events_dropped.fetch_add(1, Relaxed);
        }
    }
}

/// Final outcome of a gateway request (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    Success,
    Fallback,
    Passthrough,
    Graceful,
    Failed,
}

impl RequestOutcome {
    const ALL: [RequestOutcome; 5] = [Self::Success, Self::Fallback, Self::Passthrough, Self::Graceful, Self::Failed];

    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Fallback => "fallback_success",
            Self::Passthrough => "upstream_caller_error",
            Self::Graceful => "graceful",
            Self::Failed => "failed",
        }
    }
}

/// Bucket bounds (µs) of the gateway-overhead histogram.
const OVERHEAD_BUCKETS_US: [u64; 10] = [25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000];

#[derive(Default)]
pub struct Metrics {
    requests: [AtomicU64; 5],
    attempts_ok: AtomicU64,
    attempts_failed: [AtomicU64; 8],
    pub fallbacks: AtomicU64,
    pub hedges: AtomicU64,
    pub stream_rescues: AtomicU64,
    pub stream_malformed_chunks: AtomicU64,
    pub events_dropped: AtomicU64,
    overhead_buckets: [AtomicU64; 11],
    overhead_sum_us: AtomicU64,
    overhead_count: AtomicU64,
}

impl Metrics {
    pub fn request(&self, outcome: RequestOutcome) {
        let i = RequestOutcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.requests[i].fetch_add(1, Relaxed);
    }

    pub fn attempt(&self, class: Option<FailureClass>) {
        match class {
            None => self.attempts_ok.fetch_add(1, Relaxed),
            Some(c) => {
                let i = FailureClass::ALL.iter().position(|x| *x == c).unwrap_or(0);
                self.attempts_failed[i].fetch_add(1, Relaxed)
            }
        };
    }

    pub fn overhead(&self, spent: Duration) {
        let us = u64::try_from(spent.as_micros()).unwrap_or(u64::MAX);
        let i = OVERHEAD_BUCKETS_US.iter().position(|b| us <= *b).unwrap_or(OVERHEAD_BUCKETS_US.len());
        self.overhead_buckets[i].fetch_add(1, Relaxed);
        self.overhead_sum_us.fetch_add(us, Relaxed);
        self.overhead_count.fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self, breakers_open: usize, breakers_half_open: usize) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(out, "# HELP reliablegpt_requests_total Gateway requests by final outcome.");
        let _ = writeln!(out, "# TYPE reliablegpt_requests_total counter");
        for (i, o) in RequestOutcome::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "reliablegpt_requests_total{{outcome=\"{}\"}} {}",
                o.as_str(),
                self.requests[i].load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP reliablegpt_upstream_attempts_total Upstream attempts by result class.");
        let _ = writeln!(out, "# TYPE reliablegpt_upstream_attempts_total counter");
        let _ = writeln!(
            out,
            "reliablegpt_upstream_attempts_total{{class=\"success\"}} {}",
            self.attempts_ok.load(Relaxed)
        );
        for (i, c) in FailureClass::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "reliablegpt_upstream_attempts_total{{class=\"{}\"}} {}",
                c.as_str(),
                self.attempts_failed[i].load(Relaxed)
            );
        }
        for (name, help, value) in [
            ("reliablegpt_fallbacks_total", "Requests answered by a target other than the first.", &self.fallbacks),
            ("reliablegpt_hedges_total", "Hedged attempts started because the first target was slow.", &self.hedges),
            (
                "reliablegpt_stream_rescues_total",
                "Streams continued on a fallback after dying midway.",
                &self.stream_rescues,
            ),
            (
                "reliablegpt_stream_malformed_chunks_total",
                "Malformed upstream stream chunks dropped.",
                &self.stream_malformed_chunks,
            ),
            (
                "reliablegpt_events_dropped_total",
                "Attempt events dropped because the buffer was full.",
                &self.events_dropped,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Relaxed));
        }
        let _ = writeln!(out, "# HELP reliablegpt_circuit_breakers Circuit breakers not closed, by state.");
        let _ = writeln!(out, "# TYPE reliablegpt_circuit_breakers gauge");
        let _ = writeln!(out, "reliablegpt_circuit_breakers{{state=\"open\"}} {breakers_open}");
        let _ = writeln!(out, "reliablegpt_circuit_breakers{{state=\"half_open\"}} {breakers_half_open}");
        let _ = writeln!(
            out,
            "# HELP reliablegpt_gateway_overhead_seconds Time spent in reliablegpt itself per request, excluding upstream time and deliberate waits."
        );
        let _ = writeln!(out, "# TYPE reliablegpt_gateway_overhead_seconds histogram");
        let mut cumulative = 0;
        for (i, bound) in OVERHEAD_BUCKETS_US.iter().enumerate() {
            cumulative += self.overhead_buckets[i].load(Relaxed);
            let _ = writeln!(
                out,
                "reliablegpt_gateway_overhead_seconds_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        cumulative += self.overhead_buckets[OVERHEAD_BUCKETS_US.len()].load(Relaxed);
        let _ = writeln!(out, "reliablegpt_gateway_overhead_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "reliablegpt_gateway_overhead_seconds_sum {}",
            self.overhead_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "reliablegpt_gateway_overhead_seconds_count {}", self.overhead_count.load(Relaxed));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_counts_and_buckets() {
        let m = Metrics::default();
        m.request(RequestOutcome::Fallback);
        m.attempt(Some(FailureClass::Transient));
        m.attempt(None);
        m.overhead(Duration::from_micros(80));
        m.overhead(Duration::from_millis(200));
        let text = m.render(1, 0);
        assert!(text.contains("reliablegpt_requests_total{outcome=\"fallback_success\"} 1"));
        assert!(text.contains("reliablegpt_upstream_attempts_total{class=\"transient\"} 1"));
        assert!(text.contains("reliablegpt_upstream_attempts_total{class=\"success\"} 1"));
        assert!(text.contains("reliablegpt_gateway_overhead_seconds_bucket{le=\"0.0001\"} 1"));
        assert!(text.contains("reliablegpt_gateway_overhead_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("reliablegpt_circuit_breakers{state=\"open\"} 1"));
    }

    #[tokio::test]
    async fn a_full_event_buffer_counts_instead_of_blocking() {
        let (sink, mut rx) = EventSink::channel(1);
        let m = Metrics::default();
        let event = AttemptEvent {
            key_set_id: Uuid::nil(),
            instance: None,
            endpoint: Endpoint::Chat,
            model: "m".into(),
            provider: ProviderKind::Openai,
            key_id: Uuid::nil(),
            class: None,
            status: Some(200),
            latency: Duration::ZERO,
        };
        sink.emit(event.clone(), &m);
        sink.emit(event, &m);
        assert_eq!(m.events_dropped.load(Relaxed), 1);
        assert!(rx.recv().await.is_some());
    }
}
