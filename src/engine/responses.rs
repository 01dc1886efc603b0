//! OpenAI's Responses API (`/v1/responses`): what the engine reads from its bodies and typed stream events, its own
//! small stream pump, the rendering of answers from elsewhere in its shape, and calls about stored responses.
//!
//! A Responses stream is not rescued mid-answer: its events carry item ids, content indexes and sequence numbers that a
//! continuation on another target could not match. Before the first byte it falls back like any other request (the
//! main loop); after that, a broken stream ends with an in-band `error` event and never with `response.completed`.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use actix_web::web::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::Engine;
use super::attempt::Report;
use super::classify::FailureClass;
use super::events::{AttemptResult, AttemptRole, RequestOutcome, Usage};
use super::outcome::Ending;
use super::plan::{ProviderKind, Step};
use super::run::Cx;
use super::stream::{StreamEnd, StreamJob};
use super::substitute::Substitute;
use super::upstream::{SseEvent, SseReader};
use crate::vault::{OpenKeySet, Provider};

/// The answer text of a Responses JSON body: every `output_text` part of its `message` items, for write-through.
/// `None` unless the response completed (an incomplete answer is not worth keeping).
pub fn answer_text(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("status").and_then(Value::as_str).is_some_and(|s| s != "completed") {
        return None;
    }
    let mut text = String::new();
    let mut found = false;
    for item in v.get("output")?.as_array()? {
        if item.get("type").and_then(Value::as_str) != Some("message") {
            continue;
        }
        for part in item.get("content").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            if part.get("type").and_then(Value::as_str) == Some("output_text")
                && let Some(piece) = part.get("text").and_then(Value::as_str)
            {
                text.push_str(piece);
                found = true;
            }
        }
    }
    found.then_some(text)
}

/// The `id` of a Responses JSON body (`resp_…`).
pub fn response_id_of_body(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Top<'a> {
        #[serde(borrow)]
        id: Option<Cow<'a, str>>,
        object: Option<Cow<'a, str>>,
    }
    let top: Top<'_> = serde_json::from_slice(body).ok()?;
    if top.object.as_deref().is_some_and(|o| o != "response") {
        return None;
    }
    top.id.map(Cow::into_owned).filter(|id| valid_response_id(id))
}

/// The response id announced by a stream's first event (`response.created`), from its raw SSE bytes.
pub fn response_id_of_event(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let data: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.strip_prefix(' ').unwrap_or(d)).collect();
    let data = data.join("\n");
    let view: EventView<'_> = serde_json::from_str(&data).ok()?;
    view.response?.id.map(Cow::into_owned).filter(|id| valid_response_id(id))
}

/// Response ids as they may appear in a path: 1-128 of `[A-Za-z0-9_-]`.
pub fn valid_response_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The few fields of a stream event the pump needs. Strings without escapes are borrowed.
#[derive(Debug, Default, Deserialize)]
struct EventView<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<Cow<'a, str>>,
    #[serde(default)]
    sequence_number: Option<u64>,
    #[serde(borrow, default)]
    response: Option<ResponseView<'a>>,
}

#[derive(Debug, Default, Deserialize)]
struct ResponseView<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<Usage>,
}

/// What the client has received so far.
#[derive(Debug, Default)]
struct Seen {
    text: String,
    /// Output has begun (a text, refusal or tool-argument delta): from then on the idle timeout bounds each gap.
    producing: bool,
    /// The last `sequence_number` forwarded: an error event the gateway adds comes after it.
    sequence: Option<u64>,
    usage: Option<Usage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Cut,
    Stalled,
    EndedEarly,
    /// The upstream's own `error` or `response.failed` event (forwarded as it is).
    InBand,
}

impl Fault {
    fn describe(self) -> &'static str {
        match self {
            Self::Cut => "the upstream connection broke",
            Self::Stalled => "the upstream went silent",
            Self::EndedEarly => "the upstream ended the stream before response.completed",
            Self::InBand => "the upstream sent an error mid-stream",
        }
    }

    fn class(self) -> FailureClass {
        match self {
            Self::Stalled => FailureClass::Timeout,
            _ => FailureClass::Transient,
        }
    }
}

/// What the pump does with one upstream event.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Forward,
    Skip,
    /// `response.completed` (true) or `response.incomplete` (false, the model stopped early on its own terms): forward,
    /// then end.
    End {
        completed: bool,
    },
    /// Forward the upstream's error event, then end as a fault.
    Failed,
    Malformed,
}

impl Seen {
    fn step(&mut self, data: &str) -> Next {
        let data = data.trim();
        if data.is_empty() {
            return Next::Skip;
        }
        let Ok(event) = serde_json::from_str::<EventView<'_>>(data) else { return Next::Malformed };
        if let Some(n) = event.sequence_number {
            self.sequence = Some(self.sequence.map_or(n, |s| s.max(n)));
        }
        if let Some(usage) = event.response.as_ref().and_then(|r| r.usage) {
            self.usage = Some(usage);
        }
        match event.kind.as_deref() {
            Some("response.output_text.delta") => {
                if let Some(piece) = event.delta.as_deref() {
                    self.text.push_str(piece);
                }
                self.producing = true;
                Next::Forward
            }
            Some("response.refusal.delta" | "response.function_call_arguments.delta") => {
                self.producing = true;
                Next::Forward
            }
            Some("response.completed") => Next::End { completed: true },
            Some("response.incomplete") => Next::End { completed: false },
            Some("response.failed" | "error") => Next::Failed,
            _ => Next::Forward,
        }
    }

    /// The in-band error event that ends a stream the gateway could not finish (OpenAI's `error` event shape).
    fn error_event(&self, message: &str) -> Bytes {
        let next = self.sequence.map_or(0, |s| s + 1);
        let data = json!({"type": "error", "code": "stream_interrupted", "message": message, "param": null,
                          "sequence_number": next});
        Bytes::from(format!("event: error\ndata: {data}\n\n"))
    }
}

/// Streams a Responses answer to the client event by event (the first was already handed to it) and runs the
/// request's "after" step when it ends.
pub(super) async fn pump(mut job: StreamJob, mut reader: SseReader, first: SseEvent) {
    let mut seen = Seen::default();
    let idle = job.engine.settings.stream_idle_timeout;
    let mut stalls_at = Instant::now() + idle;
    // A reasoning model may be silent for long after `response.created` while it thinks: until its output begins, the
    // stream may wait as long as the request's own time budget (from now) allows.
    let thinking_until = Instant::now() + job.req.timeout.unwrap_or(job.engine.settings.request_timeout);
    let mut next = Some(seen.step(&first.data));
    let ended = loop {
        let step = match next.take() {
            Some(step) => step,
            None => {
                let wait_until = if seen.producing { stalls_at } else { stalls_at.max(thinking_until) };
                let event = match tokio::time::timeout_at(wait_until.into(), reader.next_event()).await {
                    Err(_) => break fault(&mut job, &mut seen, Fault::Stalled).await,
                    Ok(Err(_)) => break fault(&mut job, &mut seen, Fault::Cut).await,
                    Ok(Ok(None)) => break fault(&mut job, &mut seen, Fault::EndedEarly).await,
                    Ok(Ok(Some(event))) => event,
                };
                let mut step = seen.step(&event.data);
                let forward = matches!(step, Next::Forward | Next::End { .. } | Next::Failed);
                let mut broke = None;
                let mut bytes = event.raw;
                if step == Next::Forward {
                    let gathered = gather(&job, &mut seen, &mut reader, bytes).await;
                    bytes = gathered.bytes;
                    broke = gathered.fault;
                    if let Some(last) = gathered.ended {
                        step = last;
                    }
                }
                if forward && job.tx.send(bytes).await.is_err() {
                    break end(&mut job, &mut seen, RequestOutcome::Cancelled, None, false);
                }
                if forward {
                    stalls_at = Instant::now() + idle;
                }
                if let Some(why) = broke {
                    break fault(&mut job, &mut seen, why).await;
                }
                step
            }
        };
        match step {
            Next::Forward => {}
            Next::Skip | Next::Malformed => {
                if step == Next::Malformed {
                    job.engine.metrics.malformed_chunk();
                    tracing::warn!("dropped a malformed upstream Responses stream event");
                }
                if job.tx.is_closed() {
                    break end(&mut job, &mut seen, RequestOutcome::Cancelled, None, false);
                }
            }
            Next::End { completed } => {
                let outcome = if job.run.first_failure.is_some() {
                    RequestOutcome::FallbackSuccess
                } else {
                    RequestOutcome::Success
                };
                break end(&mut job, &mut seen, outcome, None, completed);
            }
            Next::Failed => break fault(&mut job, &mut seen, Fault::InBand).await,
        }
    };
    let _ = job.done.send(ended);
}

/// What [`gather`] joined.
struct Gathered {
    bytes: Bytes,
    /// The joined events ended the stream (`response.completed`, `response.incomplete`, or the upstream's error).
    ended: Option<Next>,
    /// The read after the joined events found the stream broken or ended early.
    fault: Option<Fault>,
}

/// Joins to `first` every event the upstream has already delivered, as the chat pump does: one read's events leave in
/// one write, and nothing waits for the network.
async fn gather(job: &StreamJob, seen: &mut Seen, reader: &mut SseReader, first: Bytes) -> Gathered {
    use futures_util::FutureExt as _;
    let mut batch: Option<BytesMut> = None;
    let mut out = Gathered { bytes: Bytes::new(), ended: None, fault: None };
    while batch.as_ref().map_or(first.len(), BytesMut::len) < super::stream::MAX_WRITE {
        let read = match reader.next_event().now_or_never() {
            Some(read) => read,
            None => {
                super::stream::let_ready_tasks_run().await;
                match reader.next_event().now_or_never() {
                    Some(read) => read,
                    None => break,
                }
            }
        };
        let event = match read {
            Ok(Some(event)) => event,
            Ok(None) => {
                out.fault = Some(Fault::EndedEarly);
                break;
            }
            Err(_) => {
                out.fault = Some(Fault::Cut);
                break;
            }
        };
        let step = seen.step(&event.data);
        match step {
            Next::Skip => {}
            Next::Malformed => {
                job.engine.metrics.malformed_chunk();
                tracing::warn!("dropped a malformed upstream Responses stream event");
            }
            Next::Forward | Next::End { .. } | Next::Failed => {
                batch.get_or_insert_with(|| BytesMut::from(&first[..])).extend_from_slice(&event.raw);
                if step != Next::Forward {
                    out.ended = Some(step);
                    break;
                }
            }
        }
    }
    out.bytes = batch.map_or(first, BytesMut::freeze);
    out
}

/// The stream broke after the client saw bytes: account it like a failed attempt, end it with an error event (unless
/// the upstream's own was forwarded), and never with `response.completed`.
async fn fault(job: &mut StreamJob, seen: &mut Seen, fault: Fault) -> StreamEnd {
    let message = format!(
        "The response was cut short: {} after {} characters of output. The partial output above is incomplete.",
        fault.describe(),
        seen.text.chars().count()
    );
    if let Some(candidate) = job.plan.candidates.get(job.pos) {
        let (step, key) = (&job.plan.steps[candidate.step], &job.set.keys[candidate.key]);
        job.engine.breakers.record_failure(&candidate.breaker);
        job.run.note(step, key, fault.class(), fault.describe());
        let report = Report {
            step,
            key,
            role: AttemptRole::Main,
            result: AttemptResult::Failed(fault.class()),
            status: None,
            latency: Duration::ZERO,
            tokens: None,
        };
        job.engine.report(&cx(job), report);
        tracing::warn!(reason = fault.describe(), model = %step.model, chars = seen.text.len(), "Responses stream ended incomplete");
    }
    if fault != Fault::InBand {
        let _ = job.tx.send(seen.error_event(&message)).await;
    }
    end(job, seen, RequestOutcome::Partial, Some(message), false)
}

fn cx(job: &StreamJob) -> Cx<'_> {
    Cx {
        set: &job.set,
        req: &job.req,
        started: job.started,
        deadline: Instant::now(),
        hedge: None,
        caching: job.caching,
    }
}

/// The "after" step of a Responses stream.
fn end(
    job: &mut StreamJob,
    seen: &mut Seen,
    outcome: RequestOutcome,
    error: Option<String>,
    complete: bool,
) -> StreamEnd {
    if let Some(usage) = seen.usage {
        job.run.billed.add(usage);
    }
    let served_by = job
        .plan
        .candidates
        .get(job.pos)
        .map(|c| &job.plan.steps[c.step])
        .map(|step| (step.model.clone(), step.provider));
    let ending = Ending {
        outcome,
        served_by,
        usage: seen.usage,
        text: (job.caching && complete && outcome.answered()).then(|| seen.text.clone()),
    };
    job.engine.finish(&cx(job), &job.run, ending);
    StreamEnd { outcome, text: std::mem::take(&mut seen.text), usage: seen.usage, error }
}

/// How long the key that created a stored response is remembered: providers keep stored responses 30 days by default.
pub const PINS_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);

/// How often records older than [`PINS_KEPT`] are pruned (by every replica; the delete is idempotent).
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How the ids of answers from elsewhere start: no provider stores them.
pub const SUBSTITUTE_ID_PREFIX: &str = "resp_rgpt_";

/// An answer from elsewhere (cache, `graceful_string`) as the Responses API would have answered: a completed response
/// object, or its event sequence.
pub fn render(stream: bool, answer: &Substitute) -> Bytes {
    let created = chrono::Utc::now().timestamp();
    let id = format!("{SUBSTITUTE_ID_PREFIX}{}", Uuid::new_v4().simple());
    let item_id = format!("msg_rgpt_{}", Uuid::new_v4().simple());
    let (model, text) = (answer.model.as_str(), answer.text.as_str());
    let part = json!({"type": "output_text", "text": text, "annotations": []});
    let item = json!({"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [part]});
    let usage = json!({"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
                       "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0});
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": id, "object": "response", "created_at": created, "status": status, "error": null,
               "incomplete_details": null, "model": model, "output": output, "parallel_tool_calls": true,
               "store": false, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
               "usage": usage, "metadata": {}})
    };
    if !stream {
        return Bytes::from(response("completed", json!([item]), usage).to_string());
    }
    let empty_item =
        json!({"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []});
    let empty_part = json!({"type": "output_text", "text": "", "annotations": []});
    let events = [
        ("response.created", json!({"response": response("in_progress", json!([]), Value::Null)})),
        ("response.in_progress", json!({"response": response("in_progress", json!([]), Value::Null)})),
        ("response.output_item.added", json!({"output_index": 0, "item": empty_item})),
        (
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": empty_part}),
        ),
        (
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": text}),
        ),
        ("response.output_text.done", json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text})),
        (
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part}),
        ),
        ("response.output_item.done", json!({"output_index": 0, "item": item})),
        ("response.completed", json!({"response": response("completed", json!([item]), usage)})),
    ];
    let mut out = String::new();
    for (n, (kind, mut data)) in events.into_iter().enumerate() {
        if let Some(map) = data.as_object_mut() {
            map.insert("type".to_owned(), Value::String(kind.to_owned()));
            map.insert("sequence_number".to_owned(), json!(n));
        }
        out.push_str(&format!("event: {kind}\ndata: {data}\n\n"));
    }
    Bytes::from(out)
}

/// A call about a stored response (`GET`/`DELETE /responses/{id}`, `…/cancel`, `…/input_items`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredCall {
    Get,
    Delete,
    Cancel,
    InputItems,
}

/// Why a call about a stored response could not be sent with its key.
#[derive(Debug, thiserror::Error)]
pub enum StoredCallError {
    /// The key is not in the set any more.
    #[error("the key is no longer in the key set")]
    KeyGone,
    #[error("the key's upstream is refused by the egress policy or cannot serve the Responses API")]
    Unusable,
    #[error("the query string is not valid in a URL")]
    BadQuery,
    #[error("{0}")]
    Upstream(String),
}

/// The upstream's answer to a stored-response call, passed on unchanged.
pub struct StoredAnswer {
    pub status: u16,
    pub body: Bytes,
}

impl Engine {
    /// Sends a call about stored response `id` with exactly the key `key_id` (the one that created it).
    pub async fn stored_response_call(
        &self,
        set: &OpenKeySet,
        key_id: Uuid,
        call: StoredCall,
        id: &str,
        query: &str,
    ) -> Result<StoredAnswer, StoredCallError> {
        use secrecy::ExposeSecret as _;
        let key = set.keys.iter().find(|k| k.id == key_id).ok_or(StoredCallError::KeyGone)?;
        if key.provider != Provider::Openai || !valid_response_id(id) {
            return Err(StoredCallError::Unusable);
        }
        let (base, provider) = match &key.target.base_url {
            Some(b) => (b.as_str(), ProviderKind::Custom),
            None => (self.settings.openai_base_url.as_str(), ProviderKind::Openai),
        };
        let (method, tail) = match call {
            StoredCall::Get => (reqwest::Method::GET, ""),
            StoredCall::Delete => (reqwest::Method::DELETE, ""),
            StoredCall::Cancel => (reqwest::Method::POST, "/cancel"),
            StoredCall::InputItems => (reqwest::Method::GET, "/input_items"),
        };
        let mut url = format!("{base}/responses/{id}{tail}");
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        if reqwest::Url::parse(&url).is_err() {
            return Err(StoredCallError::BadQuery);
        }
        let step = Step {
            model: String::new(),
            provider,
            url,
            endpoint: base.to_owned(),
            parsed: None,
            stream_url: None,
            keys: Vec::new(),
        };
        if !self.egress_allows(&step) {
            return Err(StoredCallError::Unusable);
        }
        let mut auth = reqwest::header::HeaderValue::from_str(&zeroize::Zeroizing::new(format!(
            "Bearer {}",
            key.secret.expose_secret()
        )))
        .map_err(|_| StoredCallError::Unusable)?;
        auth.set_sensitive(true);
        let request = self.clients.get().request(method, &step.url).header(reqwest::header::AUTHORIZATION, auth);
        let limit = self.settings.max_upstream_body;
        let read = async {
            let mut response = request.send().await.map_err(|e| {
                StoredCallError::Upstream(if e.is_timeout() { "timed out" } else { "connection failed" }.to_owned())
            })?;
            let status = response.status().as_u16();
            let mut body = actix_web::web::BytesMut::new();
            while let Some(chunk) =
                response.chunk().await.map_err(|_| StoredCallError::Upstream("connection broke".to_owned()))?
            {
                if body.len() + chunk.len() > limit {
                    return Err(StoredCallError::Upstream(format!("answer larger than {limit} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(StoredAnswer { status, body: body.freeze() })
        };
        tokio::time::timeout(self.settings.request_timeout, read)
            .await
            .unwrap_or_else(|_| Err(StoredCallError::Upstream("no answer in time".to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::super::substitute::SubstituteSource;
    use super::*;

    #[test]
    fn answer_text_joins_output_text_parts_of_completed_responses() {
        let body = br#"{"id":"resp_1","object":"response","status":"completed","output":[
            {"type":"reasoning","id":"rs_1","summary":[]},
            {"type":"message","content":[{"type":"output_text","text":"Hello "},{"type":"refusal","refusal":"x"},
                                         {"type":"output_text","text":"world"}]}],
            "usage":{"input_tokens":3,"output_tokens":2,"total_tokens":5}}"#;
        assert_eq!(answer_text(body).as_deref(), Some("Hello world"));
        assert_eq!(answer_text(br#"{"status":"incomplete","output":[{"type":"message","content":[{"type":"output_text","text":"Hel"}]}]}"#), None);
        assert_eq!(answer_text(br#"{"status":"completed","output":[{"type":"function_call"}]}"#), None);
        assert_eq!(answer_text(b"nope"), None);
        assert_eq!(response_id_of_body(body).as_deref(), Some("resp_1"));
        assert_eq!(response_id_of_body(br#"{"id":"../x","object":"response"}"#), None);
        assert_eq!(response_id_of_body(br#"{"id":"chatcmpl-1","object":"chat.completion"}"#), None);
    }

    #[test]
    fn the_created_event_names_the_response() {
        let raw = b"event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_abc\",\"status\":\"in_progress\"}}\n\n";
        assert_eq!(response_id_of_event(raw).as_deref(), Some("resp_abc"));
        assert_eq!(response_id_of_event(b"data: {\"type\":\"response.in_progress\"}\n\n"), None);
        assert_eq!(response_id_of_event(b"data: [DONE]\n\n"), None);
    }

    #[test]
    fn steps_track_text_usage_and_sequence() {
        let mut seen = Seen::default();
        assert_eq!(
            seen.step(r#"{"type":"response.created","sequence_number":0,"response":{"id":"r"}}"#),
            Next::Forward
        );
        assert_eq!(seen.step(r#"{"type":"response.reasoning_summary_text.delta","delta":"hmm"}"#), Next::Forward);
        assert!(!seen.producing, "reasoning is not output yet");
        assert_eq!(
            seen.step(r#"{"type":"response.output_text.delta","sequence_number":4,"delta":"Hi \"x\""}"#),
            Next::Forward
        );
        assert_eq!(seen.step(""), Next::Skip);
        assert_eq!(seen.step("{oops"), Next::Malformed);
        assert_eq!(seen.text, "Hi \"x\"");
        assert!(seen.producing, "output has begun");
        let error: Value = serde_json::from_str(
            std::str::from_utf8(&seen.error_event("cut"))
                .unwrap()
                .lines()
                .nth(1)
                .unwrap()
                .strip_prefix("data: ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!((error["type"].as_str(), error["sequence_number"].as_u64()), (Some("error"), Some(5)));
        assert_eq!(
            seen.step(r#"{"type":"response.completed","sequence_number":9,"response":{"id":"r","usage":{"input_tokens":7,"output_tokens":3,"total_tokens":10}}}"#),
            Next::End { completed: true }
        );
        assert_eq!(seen.usage, Some(Usage { prompt_tokens: 7, completion_tokens: 3 }));
        assert_eq!(seen.step(r#"{"type":"response.incomplete","response":{}}"#), Next::End { completed: false });
        assert_eq!(seen.step(r#"{"type":"error","code":"server_error","message":"m"}"#), Next::Failed);
        assert_eq!(seen.step(r#"{"type":"response.failed","response":{"error":{}}}"#), Next::Failed);
    }

    #[test]
    fn substitutes_render_as_responses() {
        let answer =
            Substitute { text: "Back soon.".into(), model: "gpt-4o".into(), source: SubstituteSource::Graceful };
        let body = render(false, &answer);
        assert_eq!(answer_text(&body).as_deref(), Some("Back soon."));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((v["object"].as_str(), v["model"].as_str()), (Some("response"), Some("gpt-4o")));
        let sse = String::from_utf8(render(true, &answer).to_vec()).unwrap();
        let kinds: Vec<&str> = sse.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
        assert_eq!(kinds.first(), Some(&"response.created"));
        assert_eq!(kinds.last(), Some(&"response.completed"));
        let mut seen = Seen::default();
        for data in sse.lines().filter_map(|l| l.strip_prefix("data: ")) {
            seen.step(data);
        }
        assert_eq!(seen.text, "Back soon.");
        assert_eq!(seen.sequence, Some(8));
    }
}
