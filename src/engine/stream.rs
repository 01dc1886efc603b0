//! Streaming: forward each event as it arrives. If the stream dies after the client has seen bytes (cut, stalled,
//! ended without a finish, or an in-band error), continue it on the next target ([`super::rescue`]) and stream only the
//! continuation. If nothing can continue it, end with an in-band error event and no `[DONE]`: a truncated answer must
//! never look complete. However it ends, the pump runs the request's "after" step and reports how it ended.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::{Bytes, BytesMut};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::admit::Permit;
use super::classify::FailureClass;
use super::events::{AttemptResult, AttemptRole, RequestOutcome, Usage};
use super::outcome::Ending;
use super::plan::Plan;
use super::request::GatewayRequest;
use super::rescue::Overlap;
use super::run::{Cx, Run};
use super::upstream::{EventData, SseEvent, SseReader};
use super::{Engine, attempt::Report};
use crate::vault::OpenKeySet;

/// How a stream ended, once it has (the completion handle of [`super::Reply::Stream`]).
#[derive(Debug, Clone)]
pub struct StreamEnd {
    pub outcome: RequestOutcome,
    /// The whole answer text the client received.
    pub text: String,
    /// Usage as the client saw it: the original prompt, and completion tokens across the whole answer (estimated from
    /// the continuation's own token rate after a rescue). `None` when no upstream reported usage.
    pub usage: Option<Usage>,
    /// Why it ended early, for `partial`.
    pub error: Option<String>,
}

pub(super) struct StreamJob {
    pub engine: Arc<Engine>,
    pub set: Arc<OpenKeySet>,
    pub req: Arc<GatewayRequest>,
    pub plan: Arc<Plan>,
    pub started: Instant,
    pub caching: bool,
    /// The candidate streaming now.
    pub pos: usize,
    pub run: Run,
    /// Held for its `Drop`: the key set's concurrency slot stays taken until the stream ends.
    pub _permit: Permit,
    pub tx: mpsc::Sender<Bytes>,
    pub done: oneshot::Sender<StreamEnd>,
}

/// What the client has received so far, and what the current upstream segment has sent.
#[derive(Default)]
pub(super) struct Progress {
    /// Text forwarded to the client.
    pub text: String,
    pub finished: bool,
    id: Option<String>,
    /// Continuations are rewritten to carry the first stream's id.
    rescued: bool,
    /// Characters the current segment's upstream sent (before overlap removal), for its token rate.
    segment_chars: usize,
    /// The usage the client gets to see.
    client_usage: Option<Usage>,
    /// Characters of the partial answer that the current continuation was given.
    given_chars: usize,
}

impl Progress {
    /// Notes an upstream event; returns the content piece it carries.
    fn track<'v>(&mut self, event: &'v Value) -> Option<&'v str> {
        if self.id.is_none() {
            self.id = event.get("id").and_then(Value::as_str).map(str::to_owned);
        }
        let choice = event.get("choices").and_then(|c| c.get(0))?;
        if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
            self.finished = true;
        }
        let piece = choice.pointer("/delta/content").or_else(|| choice.get("text")).and_then(Value::as_str)?;
        if self.rescued {
            self.segment_chars += piece.chars().count();
        }
        Some(piece)
    }
}

enum Fault {
    Cut,
    Stalled,
    EndedEarly,
    InBandError,
}

impl Fault {
    fn describe(&self) -> &'static str {
        match self {
            Self::Cut => "the upstream connection broke",
            Self::Stalled => "the upstream went silent",
            Self::EndedEarly => "the upstream ended the stream without finishing",
            Self::InBandError => "the upstream sent an error mid-stream",
        }
    }

    fn class(&self) -> FailureClass {
        match self {
            Self::Stalled => FailureClass::Timeout,
            _ => FailureClass::Transient,
        }
    }
}

/// What the pump does with one upstream event.
enum Step {
    Forward(Bytes),
    Skip,
    Done,
    /// Done, with `[DONE]` already sent in the last write.
    DoneSent,
    Fault(Fault),
}

/// At most this much is gathered into one write: a fast upstream's backlog still reaches the client in pieces.
pub(super) const MAX_WRITE: usize = 64 * 1024;
const DONE: &[u8] = b"data: [DONE]\n\n";

impl StreamJob {
    fn cx(&self, deadline: Instant) -> Cx<'_> {
        Cx { set: &self.set, req: &self.req, started: self.started, deadline, hedge: None, caching: self.caching }
    }

    pub async fn pump(mut self, mut reader: SseReader, first: SseEvent) {
        let mut progress = Progress::default();
        let mut overlap: Option<Overlap> = None;
        let wants_usage = self.req.include_usage;
        if let EventData::Json(v) = first.json()
            && let Some(piece) = progress.track(&v)
        {
            progress.text.push_str(piece);
        }
        let idle = self.engine.settings.stream_idle_timeout;
        // The stall timer runs from the last event that carried something: comments and empty events are not progress,
        // so an upstream that only sends keep-alives still stalls.
        let mut stalls_at = Instant::now() + idle;
        // A rescue's first event, handled like any other.
        let mut pending: Option<SseEvent> = None;
        // What the event after the last write's events says, when it could not join that write.
        let mut held: Option<Step> = None;
        let ended = loop {
            let step = match held.take() {
                Some(step) => step,
                None => {
                    let next = match pending.take() {
                        Some(event) => Ok(Ok(Some(event))),
                        None => tokio::time::timeout_at(stalls_at.into(), reader.next_event()).await,
                    };
                    self.step(next, &mut progress, &mut overlap, wants_usage)
                }
            };
            let fault = match step {
                Step::Forward(bytes) => {
                    let (bytes, after) =
                        self.gather(bytes, &mut reader, &mut progress, &mut overlap, wants_usage).await;
                    held = after;
                    if self.tx.send(bytes).await.is_err() {
                        break self.end(&mut progress, RequestOutcome::Cancelled, None);
                    }
                    stalls_at = Instant::now() + idle;
                    continue;
                }
                // Nothing to send, so a client that left would go unnoticed: look.
                Step::Skip if self.tx.is_closed() => break self.end(&mut progress, RequestOutcome::Cancelled, None),
                Step::Skip => continue,
                Step::Done | Step::DoneSent => {
                    // The body's end is usually already here: read it so the connection is reused.
                    reader.drain_ready();
                    if matches!(step, Step::Done) {
                        let _ = self.tx.send(Bytes::from_static(DONE)).await;
                    }
                    let outcome = self.answered_outcome(&progress);
                    break self.end(&mut progress, outcome, None);
                }
                Step::Fault(fault) => fault,
            };
            if progress.finished {
                // Everything arrived; only the ending was odd.
                let _ = self.tx.send(Bytes::from_static(DONE)).await;
                let outcome = self.answered_outcome(&progress);
                break self.end(&mut progress, outcome, None);
            }
            self.midstream_fault(&fault, &progress);
            match self.rescue(&progress.text).await {
                Ok(rescue) => {
                    self.engine.metrics.stream_rescued();
                    self.pos = rescue.pos;
                    reader = rescue.reader;
                    progress.rescued = true;
                    progress.segment_chars = 0;
                    progress.given_chars = progress.text.chars().count();
                    overlap = rescue.instruction.then(|| Overlap::new(&progress.text));
                    pending = Some(rescue.first);
                    stalls_at = Instant::now() + idle;
                }
                Err(why) => {
                    let message = format!(
                        "The answer was cut short: {} after {} characters, and {why}. The partial answer above is incomplete.",
                        fault.describe(),
                        progress.text.chars().count(),
                    );
                    tracing::warn!(
                        reason = fault.describe(),
                        rescue = %why,
                        chars = progress.text.len(),
                        "stream ended incomplete: no target could continue it"
                    );
                    let error = json!({"error": {"message": message, "type": "server_error", "code": "stream_interrupted", "param": null}});
                    let _ = self.tx.send(SseEvent::from_data(&error.to_string()).raw).await;
                    break self.end(&mut progress, RequestOutcome::Partial, Some(message));
                }
            }
        };
        let _ = self.done.send(ended);
    }

    /// Joins to `first` every event the upstream has already delivered, so that one read's events leave in one write;
    /// never waits for the network. The HTTP client hands a response over one chunk at a time from its connection's
    /// task, so when no event is ready the pump lets that task run once (it decodes what it has already read) and looks
    /// again; only when that brings nothing do the gathered events go out. Returns the bytes to write and, when an
    /// event could not join them (a fault, or a rescue's rewrite), what it said.
    async fn gather(
        &mut self,
        first: Bytes,
        reader: &mut SseReader,
        progress: &mut Progress,
        overlap: &mut Option<Overlap>,
        wants_usage: bool,
    ) -> (Bytes, Option<Step>) {
        let mut batch: Option<BytesMut> = None;
        let mut held = None;
        while batch.as_ref().map_or(first.len(), BytesMut::len) < MAX_WRITE {
            let next = match futures_util::FutureExt::now_or_never(reader.next_event()) {
                Some(next) => next,
                None => {
                    let_ready_tasks_run().await;
                    match futures_util::FutureExt::now_or_never(reader.next_event()) {
                        Some(next) => next,
                        None => break,
                    }
                }
            };
            match self.step(Ok(next), progress, overlap, wants_usage) {
                Step::Forward(more) => {
                    batch.get_or_insert_with(|| BytesMut::from(&first[..])).extend_from_slice(&more);
                }
                Step::Skip => {}
                Step::Done => {
                    batch.get_or_insert_with(|| BytesMut::from(&first[..])).extend_from_slice(DONE);
                    held = Some(Step::DoneSent);
                    break;
                }
                other => {
                    held = Some(other);
                    break;
                }
            }
        }
        (batch.map_or(first, BytesMut::freeze), held)
    }

    /// Turns one read into what to do with it.
    fn step(
        &mut self,
        next: Result<Result<Option<SseEvent>, super::upstream::SseError>, tokio::time::error::Elapsed>,
        progress: &mut Progress,
        overlap: &mut Option<Overlap>,
        wants_usage: bool,
    ) -> Step {
        let event = match next {
            Err(_) => return Step::Fault(Fault::Stalled),
            Ok(Err(_)) => return Step::Fault(Fault::Cut),
            Ok(Ok(None)) => return Step::Fault(Fault::EndedEarly),
            Ok(Ok(Some(event))) => event,
        };
        if !progress.rescued
            && let Some(step) = self.step_common(&event, progress)
        {
            return step;
        }
        let mut v = match event.json() {
            EventData::Done => return Step::Done,
            EventData::Empty => return Step::Skip,
            EventData::Malformed => {
                self.engine.metrics.malformed_chunk();
                tracing::warn!(bytes = event.raw.len(), "dropped a malformed upstream stream chunk");
                return Step::Skip;
            }
            EventData::Json(v) if v.get("error").is_some() => return Step::Fault(Fault::InBandError),
            EventData::Json(v) => v,
        };
        if let Some(usage) = v.get("usage").filter(|u| !u.is_null()) {
            let reported: Usage = serde_json::from_value(usage.clone()).unwrap_or_default();
            self.run.billed.add(reported);
            let client = if progress.rescued { self.whole_answer_usage(progress, reported) } else { reported };
            progress.client_usage = Some(client);
            if progress.rescued {
                if !wants_usage {
                    return Step::Skip;
                }
                v["usage"] = json!({
                    "prompt_tokens": client.prompt_tokens,
                    "completion_tokens": client.completion_tokens,
                    "total_tokens": client.prompt_tokens + client.completion_tokens,
                });
            }
        }
        if !progress.rescued {
            // The common path: forward the upstream's bytes untouched.
            if let Some(piece) = progress.track(&v) {
                progress.text.push_str(piece);
            }
            return Step::Forward(event.raw);
        }
        if let Some(pending) = overlap.as_mut() {
            // Hold the continuation's first pieces back until the repeated part can be recognised.
            if let Some(piece) = progress.track(&v) {
                pending.push(piece);
            }
            if !progress.finished && !pending.ready() {
                return Step::Skip;
            }
            let fresh = pending.take_fresh();
            *overlap = None;
            progress.text.push_str(&fresh);
            set_piece(&mut v, &fresh);
            return Step::Forward(rewrite_id(v, progress.id.as_deref()));
        }
        let is_role_only = v.pointer("/choices/0/delta/content").and_then(Value::as_str).is_some_and(str::is_empty)
            && v.pointer("/choices/0/delta/role").is_some();
        if let Some(piece) = progress.track(&v) {
            progress.text.push_str(piece);
        }
        if is_role_only {
            return Step::Skip;
        }
        Step::Forward(rewrite_id(v, progress.id.as_deref()))
    }

    /// The common path (no rescue): read only what the engine needs and forward the upstream's bytes untouched.
    /// `None` when the event is not an ordinary chunk (the full parse then decides).
    fn step_common(&mut self, event: &SseEvent, progress: &mut Progress) -> Option<Step> {
        let data = event.data.trim();
        if data.is_empty() {
            return Some(Step::Skip);
        }
        if data == "[DONE]" {
            return Some(Step::Done);
        }
        let chunk = super::chunk::ChunkView::parse(data)?;
        if chunk.error.is_some() {
            return Some(Step::Fault(Fault::InBandError));
        }
        if let Some(usage) = chunk.usage {
            self.run.billed.add(usage);
            progress.client_usage = Some(usage);
        }
        if progress.id.is_none() {
            progress.id = chunk.id.as_deref().map(str::to_owned);
        }
        if chunk.choice().is_some_and(|c| c.finish_reason.is_some()) {
            progress.finished = true;
        }
        if let Some(piece) = chunk.piece() {
            progress.text.push_str(piece);
        }
        Some(Step::Forward(event.raw.clone()))
    }

    /// The whole answer's usage after a rescue: the original prompt (the continuation's prompt less what was added to
    /// it) and the completion across the whole answer, at the continuation's own token rate.
    fn whole_answer_usage(&self, progress: &Progress, continuation: Usage) -> Usage {
        let rate = continuation.completion_tokens as f64 / progress.segment_chars.max(1) as f64;
        let whole = progress.text.chars().count() as f64;
        let added = (rate * progress.given_chars as f64).round() as u64;
        Usage {
            prompt_tokens: continuation.prompt_tokens.saturating_sub(added).max(1),
            completion_tokens: (rate * whole).round() as u64,
        }
    }

    fn answered_outcome(&self, progress: &Progress) -> RequestOutcome {
        if progress.rescued {
            RequestOutcome::Rescued
        } else if self.run.first_failure.is_some() {
            RequestOutcome::FallbackSuccess
        } else {
            RequestOutcome::Success
        }
    }

    /// Accounts a mid-stream fault of the current target like a failed attempt.
    fn midstream_fault(&mut self, fault: &Fault, progress: &Progress) {
        let Some(candidate) = self.plan.candidates.get(self.pos) else { return };
        let (step, key) = (&self.plan.steps[candidate.step], &self.set.keys[candidate.key]);
        self.engine.breakers.record_failure(&candidate.breaker);
        self.run.note(step, key, fault.class(), fault.describe());
        let report = Report {
            step,
            key,
            role: if progress.rescued { AttemptRole::Rescue } else { AttemptRole::Main },
            result: AttemptResult::Failed(fault.class()),
            status: None,
            latency: Duration::ZERO,
            tokens: None,
        };
        self.engine.report(&self.cx(Instant::now()), report);
        tracing::warn!(
            reason = fault.describe(),
            model = %step.model,
            chars = progress.text.len(),
            "stream died midway; rescuing"
        );
    }

    /// The "after" step of a stream.
    fn end(&mut self, progress: &mut Progress, outcome: RequestOutcome, error: Option<String>) -> StreamEnd {
        let served_by = self
            .plan
            .candidates
            .get(self.pos)
            .map(|c| &self.plan.steps[c.step])
            .map(|step| (step.model.clone(), step.provider));
        let ending = Ending {
            outcome,
            served_by,
            usage: progress.client_usage,
            text: (self.caching && outcome.answered()).then(|| progress.text.clone()),
        };
        self.engine.finish(&self.cx(Instant::now()), &self.run, ending);
        StreamEnd { outcome, text: std::mem::take(&mut progress.text), usage: progress.client_usage, error }
    }
}

/// Goes to the back of the runtime's queue once: every task that is ready runs first. Unlike `yield_now`, which
/// waits for the runtime's next poll of the network, this costs no system call.
pub(super) async fn let_ready_tasks_run() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await;
}

/// Replaces the content piece of a chunk.
fn set_piece(event: &mut Value, piece: &str) {
    if let Some(choice) = event.pointer_mut("/choices/0") {
        if let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) {
            delta.insert("content".to_owned(), Value::String(piece.to_owned()));
        } else if let Some(map) = choice.as_object_mut() {
            map.insert("text".to_owned(), Value::String(piece.to_owned()));
        }
    }
}

fn rewrite_id(mut event: Value, id: Option<&str>) -> Bytes {
    if let (Some(id), Some(map)) = (id, event.as_object_mut()) {
        map.insert("id".to_owned(), Value::String(id.to_owned()));
    }
    SseEvent::from_data(&event.to_string()).raw
}

/// The answer text of a JSON chat or completion body (for write-through).
pub(super) fn answer_text(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let choice = v.pointer("/choices/0")?;
    choice.pointer("/message/content").or_else(|| choice.get("text")).and_then(Value::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_text_of_chat_and_completion_bodies() {
        let chat = br#"{"choices":[{"message":{"role":"assistant","content":"hi there"}}]}"#;
        assert_eq!(answer_text(chat).as_deref(), Some("hi there"));
        assert_eq!(answer_text(br#"{"choices":[{"text":"go on"}]}"#).as_deref(), Some("go on"));
        assert_eq!(answer_text(br#"{"data":[]}"#), None);
        assert_eq!(answer_text(b"not json"), None);
    }

    #[test]
    fn pieces_are_replaced_in_chat_and_legacy_chunks() {
        let mut chat = json!({"choices": [{"index": 0, "delta": {"content": "delta echo"}}]});
        set_piece(&mut chat, " echo");
        assert_eq!(chat["choices"][0]["delta"]["content"], " echo");
        let mut legacy = json!({"choices": [{"index": 0, "text": "delta echo"}]});
        set_piece(&mut legacy, " echo");
        assert_eq!(legacy["choices"][0]["text"], " echo");
    }
}
