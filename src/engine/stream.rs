//! Streaming: forward each event as it arrives. If the stream dies after the client has seen bytes (cut, stalled, or
//! ended without a finish), continue on the next target with the partial answer as an assistant prefill and stream only
//! the continuation. If nothing can continue it, end with an in-band error event and no `[DONE]`: a truncated answer
//! must never look complete.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use actix_web::web::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::classify::FailureClass;
use super::plan::{Endpoint, Step};
use super::upstream::{self, AttemptOk, EventData, SseEvent, SseReader};
use super::{Admission, Engine, TargetKey, body_for};
use crate::vault::OpenKeySet;

pub struct StreamJob {
    pub engine: Arc<Engine>,
    pub set: Arc<OpenKeySet>,
    pub endpoint: Endpoint,
    pub body: Value,
    pub steps: Vec<Step>,
    pub next_step: usize,
    pub tx: mpsc::Sender<Bytes>,
}

/// What the client has received so far.
#[derive(Default)]
struct Progress {
    text: String,
    finished: bool,
    id: Option<String>,
    /// After a rescue, continuation events are rewritten to carry the first stream's id.
    rewrite_id: bool,
}

impl Progress {
    fn track(&mut self, event: &Value) {
        if self.id.is_none() {
            self.id = event.get("id").and_then(Value::as_str).map(str::to_owned);
        }
        if let Some(choice) = event.get("choices").and_then(|c| c.get(0)) {
            let piece = choice.pointer("/delta/content").or_else(|| choice.get("text")).and_then(Value::as_str);
            if let Some(piece) = piece {
                self.text.push_str(piece);
            }
            if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
                self.finished = true;
            }
        }
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
}

impl StreamJob {
    pub async fn pump(mut self, mut reader: SseReader, first: SseEvent) {
        let mut progress = Progress::default();
        if let EventData::Json(v) = first.json() {
            progress.track(&v);
        }
        let idle = self.engine.settings().stream_idle_timeout;
        loop {
            let fault = match tokio::time::timeout(idle, reader.next_event()).await {
                Err(_) => Fault::Stalled,
                Ok(Err(_)) => Fault::Cut,
                Ok(Ok(None)) if progress.finished => {
                    // Finished but no [DONE]: finalise promptly.
                    let _ = self.tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
                    return;
                }
                Ok(Ok(None)) => Fault::EndedEarly,
                Ok(Ok(Some(event))) => match event.json() {
                    EventData::Done => {
                        let _ = self.tx.send(event.raw).await;
                        return;
                    }
                    EventData::Malformed => {
                        self.engine.metrics.stream_malformed_chunks.fetch_add(1, Relaxed);
                        tracing::warn!(bytes = event.raw.len(), "dropped a malformed upstream stream chunk");
                        continue;
                    }
                    EventData::Empty => continue,
                    EventData::Json(v) if v.get("error").is_some() => Fault::InBandError,
                    EventData::Json(v) => {
                        progress.track(&v);
                        let out = if progress.rewrite_id { rewrite_id(v, progress.id.as_deref()) } else { event.raw };
                        if self.tx.send(out).await.is_err() {
                            return; // The client left; dropping the reader cancels the upstream request.
                        }
                        continue;
                    }
                },
            };
            if progress.finished {
                let _ = self.tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
                return;
            }
            tracing::warn!(reason = fault.describe(), chars = progress.text.len(), "stream died midway; rescuing");
            match self.rescue(&progress).await {
                Ok((next_reader, first)) => {
                    self.engine.metrics.stream_rescues.fetch_add(1, Relaxed);
                    progress.rewrite_id = true;
                    reader = next_reader;
                    if let EventData::Json(v) = first.json() {
                        let is_role_only =
                            v.pointer("/choices/0/delta/content").and_then(Value::as_str).is_some_and(str::is_empty)
                                && v.pointer("/choices/0/delta/role").is_some();
                        progress.track(&v);
                        if !is_role_only && self.tx.send(rewrite_id(v, progress.id.as_deref())).await.is_err() {
                            return;
                        }
                    }
                }
                Err(prefill_rejected) => {
                    let message = format!(
                        "The answer was cut short: {} after {} characters, and {}. The partial answer above is incomplete.",
                        fault.describe(),
                        progress.text.chars().count(),
                        if prefill_rejected {
                            "the fallback model refused to continue it (assistant prefill not supported)"
                        } else {
                            "no fallback target could continue it"
                        }
                    );
                    let error = json!({"error": {"message": message, "type": "server_error", "code": "stream_interrupted", "param": null}});
                    let _ = self.tx.send(SseEvent::from_data(&error.to_string()).raw).await;
                    return;
                }
            }
        }
    }

    /// Tries the remaining targets with the partial answer as prefill. `Err(true)` when a target refused the prefill.
    async fn rescue(&mut self, progress: &Progress) -> Result<(SseReader, SseEvent), bool> {
        if !matches!(self.endpoint, Endpoint::Chat | Endpoint::Completions) {
            return Err(false);
        }
        let engine = self.engine.clone();
        let settings = engine.settings();
        let mut refused = false;
        while self.next_step < self.steps.len() {
            let step = self.steps[self.next_step].clone();
            self.next_step += 1;
            if !engine.egress_allows(&step) {
                continue;
            }
            for &key_index in &step.keys {
                let Some(key) = self.set.keys.get(key_index) else { continue };
                if !engine.keys.usable(key, self.set.loaded_at) {
                    continue;
                }
                let target = TargetKey { endpoint: step.endpoint.clone(), model: step.model.clone(), key_id: key.id };
                if engine.breakers.admit(&target) == Admission::Rejected {
                    continue;
                }
                let limits = engine.limits(std::time::Instant::now() + settings.request_timeout);
                let body = body_for(&self.body, &step, Some(&progress.text));
                match upstream::attempt(&engine.client, &step, key, body, true, &limits).await {
                    Ok(AttemptOk::Stream { reader, first }) => {
                        engine.breakers.record_success(&target);
                        return Ok((reader, first));
                    }
                    Ok(AttemptOk::Body { .. }) => engine.breakers.release_probe(&target),
                    Err(f) => {
                        engine.metrics.attempt(Some(f.class));
                        match f.class {
                            FailureClass::CallerFault => {
                                engine.breakers.release_probe(&target);
                                refused = true;
                            }
                            FailureClass::Transient | FailureClass::Timeout => engine.breakers.record_failure(&target),
                            _ => engine.breakers.release_probe(&target),
                        }
                    }
                }
                break; // One key per step: rotation on credential errors is the main loop's job.
            }
        }
        Err(refused)
    }
}

fn rewrite_id(mut event: Value, id: Option<&str>) -> Bytes {
    if let (Some(id), Some(map)) = (id, event.as_object_mut()) {
        map.insert("id".to_owned(), Value::String(id.to_owned()));
    }
    SseEvent::from_data(&event.to_string()).raw
}
