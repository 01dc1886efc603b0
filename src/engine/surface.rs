//! The pass-through surface: moderations, image generation, text to speech and transcriptions (a form upload, see
//! [`super::multipart`]). These go through the same pipeline as chat (plan, select, attempt, decide; keys, breakers,
//! retries, timeouts) with three differences:
//! - fallbacks go only to catalog models of the endpoint's kind (`plan::compatible`);
//! - nothing answers from elsewhere: no semantic cache, no `graceful_string` (neither is an image or audio);
//! - speech (and a transcription's answer, whatever its format) is forwarded chunk by chunk as it arrives, with the
//!   upstream's `Content-Type`. A break before the first byte falls back like any attempt; after it, nothing can
//!   continue the body, so the client's response is aborted (no clean end of a truncated file) and the request ends
//!   `partial`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::Engine;
use super::admit::Permit;
use super::attempt::Report;
use super::classify::FailureClass;
use super::events::{AttemptResult, AttemptRole, RequestOutcome};
use super::outcome::Ending;
use super::plan::Plan;
use super::request::GatewayRequest;
use super::run::{Cx, Run};
use super::upstream::ByteStream;
use crate::vault::OpenKeySet;

/// The default deadline of an image or transcription request when the client sets none and the operator's request
/// timeout is shorter: large or high-quality images, and long recordings, routinely take longer than a chat answer.
pub const SLOW_MIN_TIMEOUT: Duration = Duration::from_secs(180);

/// A pass-through body broke after bytes reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the upstream body ended early: {0}")]
pub struct BodyBroken(&'static str);

/// Everything the byte pump needs after `serve` returned.
pub(super) struct BytesJob {
    pub engine: Arc<Engine>,
    pub set: Arc<OpenKeySet>,
    pub req: Arc<GatewayRequest>,
    pub plan: Arc<Plan>,
    pub started: Instant,
    pub pos: usize,
    pub run: Run,
    /// Held for its `Drop`: the key set's concurrency slot stays taken until the body ends.
    pub _permit: Permit,
    pub tx: mpsc::Sender<Result<Bytes, BodyBroken>>,
}

impl BytesJob {
    /// Forwards the rest of the body (`sent`: the bytes of the first chunk, already handed over); the idle timeout
    /// bounds each gap, and the upstream body limit (`RELIABLEGPT_MAX_UPSTREAM_BODY_BYTES`) the whole body's size, as
    /// for JSON answers. Runs the "after" step when it ends.
    pub(super) async fn pump(mut self, mut rest: ByteStream, sent: usize) {
        let idle = self.engine.settings.stream_idle_timeout;
        let limit = self.engine.settings.max_upstream_body;
        let mut forwarded = sent;
        let broken = loop {
            match tokio::time::timeout(idle, rest.next()).await {
                Err(_) => break Some((FailureClass::Timeout, "the upstream went silent")),
                Ok(Some(Err(_))) => break Some((FailureClass::Transient, "the upstream connection broke")),
                Ok(None) => break None,
                Ok(Some(Ok(chunk))) => {
                    forwarded = forwarded.saturating_add(chunk.len());
                    if forwarded > limit {
                        break Some((FailureClass::Refused, "the upstream body grew past the size limit"));
                    }
                    if !chunk.is_empty() && self.tx.send(Ok(chunk)).await.is_err() {
                        self.end(RequestOutcome::Cancelled);
                        return;
                    }
                }
            }
        };
        match broken {
            None => {
                let outcome = if self.run.first_failure.is_some() {
                    RequestOutcome::FallbackSuccess
                } else {
                    RequestOutcome::Success
                };
                self.end(outcome);
            }
            Some((class, why)) => {
                if let Some(candidate) = self.plan.candidates.get(self.pos) {
                    let (step, key) = (&self.plan.steps[candidate.step], &self.set.keys[candidate.key]);
                    self.engine.breakers.record_failure(&candidate.breaker);
                    self.run.note(step, key, class, why);
                    let report = Report {
                        step,
                        key,
                        role: AttemptRole::Main,
                        result: AttemptResult::Failed(class),
                        status: None,
                        latency: Duration::ZERO,
                        tokens: None,
                    };
                    self.engine.report(&self.cx(), report);
                    tracing::warn!(reason = why, model = %step.model, "pass-through body ended early");
                }
                // The client's response is aborted rather than ended: a truncated audio file must not look whole.
                let _ = self.tx.send(Err(BodyBroken(why))).await;
                self.end(RequestOutcome::Partial);
            }
        }
    }

    fn cx(&self) -> Cx<'_> {
        Cx {
            set: &self.set,
            req: &self.req,
            started: self.started,
            deadline: Instant::now(),
            hedge: None,
            caching: false,
        }
    }

    fn end(&self, outcome: RequestOutcome) {
        let served_by = self
            .plan
            .candidates
            .get(self.pos)
            .map(|c| &self.plan.steps[c.step])
            .map(|step| (step.model.clone(), step.provider));
        self.engine.finish(&self.cx(), &self.run, Ending { outcome, served_by, usage: None, text: None });
    }
}
