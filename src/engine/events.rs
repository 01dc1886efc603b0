//! What the engine tells the rest of the service: one event per upstream attempt (hedges, rescues, mid-stream faults and
//! breaker skips included) and one outcome event per request. The request path never waits on them: events go through a
//! bounded channel with `try_send` (overflow is counted), and one background task hands them to a consumer (the alerts
//! module implements [`EventConsumer`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::classify::FailureClass;
use super::metrics::Metrics;
use super::plan::{Endpoint, ProviderKind};

/// Token counts as a provider reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Usage {
    /// `input_tokens` in the Responses API.
    #[serde(default, alias = "input_tokens")]
    pub prompt_tokens: u64,
    /// `output_tokens` in the Responses API.
    #[serde(default, alias = "output_tokens")]
    pub completion_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

/// Why an attempt was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptRole {
    /// The request loop (first try, retries, rotations, fallbacks).
    Main,
    /// Started in parallel because the main attempt was slow.
    Hedge,
    /// Continuing a stream that broke after bytes reached the client.
    Rescue,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Success,
    Failed(FailureClass),
    /// Abandoned by us: the loser of a hedge race.
    Cancelled,
}

impl AttemptResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed(class) => class.as_str(),
            Self::Cancelled => "cancelled",
        }
    }
}

/// One upstream attempt (or breaker skip).
#[derive(Debug, Clone)]
pub struct AttemptEvent {
    pub at: DateTime<Utc>,
    pub key_set_id: Uuid,
    pub instance: String,
    pub endpoint: Endpoint,
    pub model: String,
    pub provider: ProviderKind,
    /// The provider key's id (never the key).
    pub key_id: Uuid,
    pub role: AttemptRole,
    pub result: AttemptResult,
    pub status: Option<u16>,
    pub latency: Duration,
    /// What the upstream reported, when it did.
    pub tokens: Option<Usage>,
}

/// Final outcome of a gateway request, from a closed set shared by metrics, logs and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOutcome {
    /// The first target answered.
    Success,
    /// Another target answered after a failure or skip.
    FallbackSuccess,
    /// A stream broke after bytes reached the client and was finished on another target.
    Rescued,
    /// Answered from somewhere other than an upstream (the semantic cache).
    Cached,
    /// Every target failed and the policy's `graceful_string` answered.
    Graceful,
    /// Over the key set's `max_concurrency` for longer than its queue allows: 503.
    Shed,
    /// Every target failed: an error.
    Failed,
    /// A stream broke after bytes reached the client and could not be finished: it ended with an in-band error.
    Partial,
    /// The upstream refused the request itself (caller fault, content filter): its answer was returned unchanged.
    CallerError,
    /// The client went away before the answer was complete.
    Cancelled,
}

impl RequestOutcome {
    pub const ALL: [RequestOutcome; 10] = [
        Self::Success,
        Self::FallbackSuccess,
        Self::Rescued,
        Self::Cached,
        Self::Graceful,
        Self::Shed,
        Self::Failed,
        Self::Partial,
        Self::CallerError,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::FallbackSuccess => "fallback_success",
            Self::Rescued => "rescued",
            Self::Cached => "cached",
            Self::Graceful => "graceful",
            Self::Shed => "shed",
            Self::Failed => "failed",
            Self::Partial => "partial",
            Self::CallerError => "caller_error",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the client received a complete answer from an upstream.
    pub fn answered(self) -> bool {
        matches!(self, Self::Success | Self::FallbackSuccess | Self::Rescued)
    }
}

/// One per request, whatever happened to it.
#[derive(Debug, Clone)]
pub struct OutcomeEvent {
    pub at: DateTime<Utc>,
    pub key_set_id: Uuid,
    pub instance: String,
    pub endpoint: Endpoint,
    pub requested_model: String,
    /// The model and provider that answered, if an upstream did.
    pub served_by: Option<(String, ProviderKind)>,
    pub outcome: RequestOutcome,
    pub fallback_reason: Option<FailureClass>,
    /// Upstream calls made (hedges and rescues included).
    pub attempts: u32,
    pub latency: Duration,
    /// What the client received (original prompt; completion across the whole answer), when known.
    pub usage: Option<Usage>,
    /// Tokens the upstreams reported across every attempt (what the providers bill).
    pub billed: Usage,
}

#[derive(Debug, Clone)]
pub enum Event {
    Attempt(AttemptEvent),
    Outcome(OutcomeEvent),
}

/// Receives every event, one at a time, on a background task. Must not block for long: the channel in front of it
/// drops (and counts) events while it is busy.
pub trait EventConsumer: Send + 'static {
    fn consume(&mut self, event: Event);
}

/// Used until the alerts module consumes events: keeps the buffer drained.
pub struct DiscardEvents;

impl EventConsumer for DiscardEvents {
    fn consume(&mut self, _event: Event) {}
}

pub const EVENT_BUFFER: usize = 10_000;

/// The sending half, held by the engine.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
}

impl EventSink {
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    pub fn emit(&self, event: Event, metrics: &Metrics) {
        if self.tx.try_send(event).is_err() {
            metrics.event_dropped();
        }
    }
}

/// How often the consumer takes what has arrived. Events are counted, not acted on per request, so a few
/// milliseconds late costs nothing; waiting on the channel instead would make every request's `try_send` wake the
/// consumer's thread (an eventfd write and a context switch per event, about a fifth of the gateway's CPU under load).
pub const EVENT_DRAIN_EVERY: Duration = Duration::from_millis(10);

/// Hands every event from `rx` to `consumer`, in order, until the engine is gone.
pub fn spawn_consumer(mut rx: mpsc::Receiver<Event>, mut consumer: impl EventConsumer) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVENT_DRAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // The channel holds `EVENT_BUFFER` events: at one drain per tick that is far beyond any request rate.
            loop {
                match rx.try_recv() {
                    Ok(event) => consumer.consume(event),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event::Attempt(AttemptEvent {
            at: Utc::now(),
            key_set_id: Uuid::nil(),
            instance: "default".into(),
            endpoint: Endpoint::Chat,
            model: "m".into(),
            provider: ProviderKind::Openai,
            key_id: Uuid::nil(),
            role: AttemptRole::Main,
            result: AttemptResult::Success,
            status: Some(200),
            latency: Duration::ZERO,
            tokens: None,
        })
    }

    #[tokio::test]
    async fn a_full_event_buffer_counts_instead_of_blocking() {
        let (sink, mut rx) = EventSink::channel(1);
        let m = Metrics::new(&[]);
        sink.emit(event(), &m);
        sink.emit(event(), &m);
        assert!(m.render(0, 0).contains("reliablegpt_events_dropped_total 1"));
        assert!(rx.recv().await.is_some());
    }

    #[tokio::test]
    async fn the_consumer_sees_every_event_in_order() {
        struct Collect(std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>);
        impl EventConsumer for Collect {
            fn consume(&mut self, event: Event) {
                let what = match event {
                    Event::Attempt(_) => "attempt",
                    Event::Outcome(_) => "outcome",
                };
                self.0.lock().unwrap().push(what);
            }
        }
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (sink, rx) = EventSink::channel(8);
        let task = spawn_consumer(rx, Collect(seen.clone()));
        let m = Metrics::new(&[]);
        sink.emit(event(), &m);
        sink.emit(event(), &m);
        drop(sink);
        task.await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec!["attempt", "attempt"]);
    }
}
