//! One upstream call: the HTTP client (guarded DNS, no redirects), request building, time limits, and the SSE reader.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use secrecy::ExposeSecret;

use super::classify::{FailureClass, classify_response, retry_after};
use super::dialect::{ANTHROPIC_VERSION, StreamTranslator, Translation, stream_error_event};
use super::events::Usage;
use super::plan::{ProviderKind, Step};
use super::translate::StreamStatus;
use crate::egress::EgressPolicy;
use crate::vault::ProviderKey;

/// Resolves upstream host names and refuses any non-public address (unless private upstreams are allowed), so a DNS
/// answer cannot point a customer's key at our internal network.
struct GuardedResolver {
    egress: EgressPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.egress.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: reqwest::dns::Addrs = Box::new(egress.resolve(&host, 0).await?.into_iter());
            Ok(addrs)
        })
    }
}

pub fn build_client(connect_timeout: Duration, egress: EgressPolicy) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(512)
        .redirect(reqwest::redirect::Policy::none())
        // HTTP(S)_PROXY / ALL_PROXY would hand the connection to a proxy that resolves names itself, past the guard.
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { egress }))
        .build()
}

#[derive(Debug)]
pub struct AttemptFailure {
    pub class: FailureClass,
    pub status: Option<u16>,
    /// The upstream's error body, returned unchanged for caller faults and context errors.
    pub body: Option<Bytes>,
    pub retry_after: Option<Duration>,
    /// Short, secret-free description for logs and the total-failure message.
    pub detail: String,
}

impl AttemptFailure {
    fn transport(class: FailureClass, detail: impl Into<String>) -> Self {
        Self { class, status: None, body: None, retry_after: None, detail: detail.into() }
    }
}

pub enum AttemptOk {
    /// `usage`: the body's `usage` object, when it has one.
    Body {
        status: u16,
        body: Bytes,
        usage: Option<Usage>,
    },
    Stream {
        reader: SseReader,
        first: SseEvent,
    },
    /// A body forwarded as it arrives, whatever its type (audio): its first chunk (read before the attempt counts as
    /// answered, so a reset before any byte still falls back) and the rest.
    Bytes {
        status: u16,
        content_type: Option<HeaderValue>,
        first: Bytes,
        rest: ByteStream,
    },
}

/// How an answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// A whole JSON body, up to `max_body`.
    Json,
    /// The same, from an API that answers only once its work is done (images, often 10-60 s): no first-byte limit,
    /// only the request's deadline.
    SlowJson,
    /// Server-sent events when the upstream answers with them (else a JSON body).
    Sse,
    /// Passed through as bytes: the first chunk is awaited, the rest is left to the caller.
    Bytes,
    /// The same, from an API that answers once its work is done (transcriptions): no first-byte limit.
    SlowBytes,
}

/// Error bodies are read only this far (their code and message come first).
const ERROR_BODY_LIMIT: usize = 64 * 1024;

pub struct Limits {
    pub first_byte_by: Instant,
    pub deadline: Instant,
    pub idle: Duration,
    /// Largest JSON answer read.
    pub max_body: usize,
    /// Largest single SSE event.
    pub max_event: usize,
}

/// Reads a whole body, at most `max` bytes, by `deadline`.
async fn read_body(response: reqwest::Response, max: usize, deadline: Instant) -> Result<Bytes, AttemptFailure> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    let read = async {
        let mut stream = response.bytes_stream();
        let mut body = actix_web::web::BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| transport_error(&e))?;
            if body.len() + chunk.len() > max {
                return Err(too_large(max));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout_at(deadline.into(), read).await.unwrap_or_else(|_| {
        Err(AttemptFailure::transport(FailureClass::Timeout, "response body not complete before the deadline"))
    })
}

fn too_large(max: usize) -> AttemptFailure {
    AttemptFailure::transport(FailureClass::Refused, format!("response larger than {max} bytes"))
}

/// One call. `translation`: the body is already in the provider's own dialect (Anthropic, Gemini), and the answer,
/// stream events and errors are translated back to chat completions.
#[allow(clippy::too_many_arguments)]
pub async fn attempt(
    client: &reqwest::Client,
    step: &Step,
    key: &ProviderKey,
    body: Bytes,
    content_type: &str,
    wire: Wire,
    limits: &Limits,
    translation: Option<Translation>,
) -> Result<AttemptOk, AttemptFailure> {
    let stream = wire == Wire::Sse;
    let url = match (&step.stream_url, stream) {
        (Some(streaming), true) => Some(streaming),
        _ => step.parsed.as_ref(),
    };
    let request = match url {
        Some(url) => client.post(url.clone()),
        None => client.post(&step.url),
    };
    let content_type = HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/json"));
    let mut request = request.header(CONTENT_TYPE, content_type).body(body);
    let secret = key.secret.expose_secret();
    let auth = match step.provider {
        ProviderKind::Azure => HeaderValue::from_str(secret).map(|v| ("api-key", v)),
        ProviderKind::Anthropic => {
            request = request.header("anthropic-version", HeaderValue::from_static(ANTHROPIC_VERSION));
            HeaderValue::from_str(secret).map(|v| ("x-api-key", v))
        }
        ProviderKind::Gemini => HeaderValue::from_str(secret).map(|v| ("x-goog-api-key", v)),
        // The formatted header is wiped when dropped; the copy `HeaderValue` makes is marked sensitive below.
        _ => HeaderValue::from_str(&zeroize::Zeroizing::new(format!("Bearer {secret}")))
            .map(|v| (AUTHORIZATION.as_str(), v)),
    };
    match auth {
        Ok((name, mut value)) => {
            value.set_sensitive(true);
            request = request.header(name, value);
        }
        Err(_) => return Err(AttemptFailure::transport(FailureClass::Credential, "key is not a valid header value")),
    }

    let response = match tokio::time::timeout_at(limits.first_byte_by.into(), request.send()).await {
        Err(_) => {
            return Err(AttemptFailure::transport(FailureClass::Timeout, "no response before the first-byte limit"));
        }
        Ok(Err(e)) => return Err(transport_error(&e)),
        Ok(Ok(r)) => r,
    };
    let status = response.status().as_u16();
    if !response.status().is_success() {
        let wait = retry_after(response.headers());
        // An error body is only read for its code and message.
        let body =
            read_body(response, limits.max_body.min(ERROR_BODY_LIMIT), limits.deadline).await.unwrap_or_default();
        let (class, body, wait) = match &translation {
            Some(t) => {
                let (class, body, hint) = t.error(status, &body);
                (class, body, wait.or(hint))
            }
            None => (classify_response(status, &body), body, wait),
        };
        return Err(AttemptFailure {
            class,
            status: Some(status),
            detail: format!("HTTP {status}"),
            body: Some(body),
            retry_after: wait,
        });
    }
    if matches!(wire, Wire::Bytes | Wire::SlowBytes) {
        return first_chunk(response, status, limits).await;
    }
    let is_sse = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if stream && is_sse {
        let mut reader = SseReader::new(response.bytes_stream(), limits.max_event);
        if let Some(t) = &translation {
            reader = reader.translated(t.stream());
        }
        loop {
            let next = tokio::time::timeout_at(limits.first_byte_by.into(), reader.next_event()).await;
            match next {
                Err(_) => {
                    return Err(AttemptFailure::transport(
                        FailureClass::Timeout,
                        "no stream event before the first-byte limit",
                    ));
                }
                Ok(Err(SseError::TooLarge(max))) => {
                    return Err(AttemptFailure::transport(
                        FailureClass::Refused,
                        format!("stream event larger than {max} bytes"),
                    ));
                }
                Ok(Err(SseError::Broken)) => {
                    return Err(AttemptFailure::transport(FailureClass::Transient, "stream connection broke"));
                }
                Ok(Ok(None)) => {
                    return Err(AttemptFailure::transport(FailureClass::Transient, "stream ended before any event"));
                }
                Ok(Ok(Some(event))) => match event.json() {
                    // Chat's `{"error": …}`, or the Responses API's `error` and `response.failed` events.
                    EventData::Json(v)
                        if v.get("error").is_some()
                            || matches!(
                                v.get("type").and_then(serde_json::Value::as_str),
                                Some("error" | "response.failed")
                            ) =>
                    {
                        let class = reader.failed.unwrap_or(FailureClass::Transient);
                        return Err(AttemptFailure::transport(class, "in-band stream error"));
                    }
                    EventData::Malformed => continue,
                    _ => return Ok(AttemptOk::Stream { reader, first: event }),
                },
            }
        }
    }
    let mut body = read_body(response, limits.max_body, limits.deadline).await?;
    if let Some(t) = &translation {
        body = t.answer(&body)?;
    }
    Ok(AttemptOk::Body { status, usage: usage_in_body(&body), body })
}

/// A pass-through answer once its first bytes arrived (by the first-byte limit).
async fn first_chunk(response: reqwest::Response, status: u16, limits: &Limits) -> Result<AttemptOk, AttemptFailure> {
    let content_type = response.headers().get(CONTENT_TYPE).cloned();
    let mut rest: ByteStream = Box::pin(response.bytes_stream());
    loop {
        match tokio::time::timeout_at(limits.first_byte_by.into(), rest.next()).await {
            Err(_) => {
                return Err(AttemptFailure::transport(
                    FailureClass::Timeout,
                    "no body bytes before the first-byte limit",
                ));
            }
            Ok(Some(Err(e))) => return Err(transport_error(&e)),
            Ok(Some(Ok(chunk))) if chunk.is_empty() => continue,
            Ok(Some(Ok(first))) => return Ok(AttemptOk::Bytes { status, content_type, first, rest }),
            Ok(None) => return Ok(AttemptOk::Bytes { status, content_type, first: Bytes::new(), rest }),
        }
    }
}

/// The `usage` object of an OpenAI JSON answer, found without parsing the whole body (it comes last).
fn usage_in_body(body: &[u8]) -> Option<Usage> {
    const NEEDLE: &[u8] = b"\"usage\"";
    let at = body.windows(NEEDLE.len()).rposition(|w| w == NEEDLE)? + NEEDLE.len();
    let open = at + body[at..].iter().position(|b| *b == b'{')?;
    if body[at..open].iter().any(|b| !(b.is_ascii_whitespace() || *b == b':')) {
        return None;
    }
    let mut de = serde_json::Deserializer::from_slice(&body[open..]);
    serde::Deserialize::deserialize(&mut de).ok()
}

fn transport_error(e: &reqwest::Error) -> AttemptFailure {
    // The guarded resolver's refusal reaches us wrapped in the connect error.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if let Some(refusal) = cause.downcast_ref::<crate::egress::EgressError>()
            && *refusal != crate::egress::EgressError::Unresolvable
        {
            return AttemptFailure::transport(
                FailureClass::Refused,
                "refused by the egress policy (non-public address)",
            );
        }
        source = cause.source();
    }
    if e.is_timeout() {
        return AttemptFailure::transport(FailureClass::Timeout, "timed out");
    }
    let what = if e.is_connect() { "connect error" } else { "connection failed (reset or closed)" };
    AttemptFailure::transport(FailureClass::Transient, what)
}

/// One server-sent event: its raw bytes (as the upstream sent them, without `\r`, ending with a blank line) and its
/// `data` payload.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub raw: Bytes,
    pub data: SseData,
}

/// An event's `data`: for the usual single `data:` line a view into the event's own bytes (no copy), valid UTF-8.
#[derive(Clone, PartialEq, Eq)]
pub struct SseData(Bytes);

impl SseData {
    fn new(bytes: Bytes) -> Self {
        match std::str::from_utf8(&bytes) {
            Ok(_) => Self(bytes),
            Err(_) => Self(Bytes::from(String::from_utf8_lossy(&bytes).into_owned())),
        }
    }
}

impl std::ops::Deref for SseData {
    type Target = str;

    fn deref(&self) -> &str {
        // Checked in `new`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for SseData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl std::fmt::Display for SseData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl PartialEq<str> for SseData {
    fn eq(&self, other: &str) -> bool {
        &**self == other
    }
}

impl PartialEq<&str> for SseData {
    fn eq(&self, other: &&str) -> bool {
        &**self == *other
    }
}

pub enum EventData {
    Done,
    Json(serde_json::Value),
    Malformed,
    /// A comment or an event without data (keep-alive).
    Empty,
}

impl SseEvent {
    pub fn from_data(data: &str) -> Self {
        let raw = Bytes::from(format!("data: {data}\n\n"));
        let data = SseData(raw.slice(6..6 + data.len()));
        Self { raw, data }
    }

    pub fn json(&self) -> EventData {
        let data = self.data.trim();
        if data.is_empty() {
            EventData::Empty
        } else if data == "[DONE]" {
            EventData::Done
        } else {
            serde_json::from_str(data).map(EventData::Json).unwrap_or(EventData::Malformed)
        }
    }
}

pub type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Why an upstream stream could not be read further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// The connection broke.
    Broken,
    /// One event grew past this many bytes without ending.
    TooLarge(usize),
}

pub struct SseReader {
    stream: ByteStream,
    max_event: usize,
    buffer: BytesMut,
    /// Bytes of `buffer` already searched for an event's end (a long event arriving in pieces is scanned once).
    scanned: usize,
    ended: bool,
    /// Another provider's stream: its events become chat chunk events, handed out from `pending`.
    translator: Option<Box<Translated>>,
    /// The class of the in-band error a translated stream reported (it is handed out as a chat `{"error"}` event).
    pub failed: Option<FailureClass>,
}

struct Translated {
    translator: StreamTranslator,
    pending: std::collections::VecDeque<SseEvent>,
    out: Vec<u8>,
    /// The provider's answer is complete (or failed): nothing more is read.
    finished: bool,
    /// The first output was seen.
    opened: bool,
    /// A first output that was only the role chunk, waiting for content (see `next_event`).
    held: Option<Bytes>,
}

impl SseReader {
    /// Events larger than `max_event` bytes are refused, so a hostile upstream cannot grow the buffer without bound.
    pub fn new(stream: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static, max_event: usize) -> Self {
        Self {
            stream: Box::pin(stream),
            max_event,
            buffer: BytesMut::with_capacity(4096),
            scanned: 0,
            ended: false,
            translator: None,
            failed: None,
        }
    }

    /// The same stream read through `translator`: `next_event` hands out chat completion chunk events (and
    /// `data: [DONE]` once the provider's answer is complete).
    pub fn translated(mut self, translator: StreamTranslator) -> Self {
        let pending = std::collections::VecDeque::new();
        self.translator = Some(Box::new(Translated {
            translator,
            pending,
            out: Vec::with_capacity(512),
            finished: false,
            opened: false,
            held: None,
        }));
        self
    }

    /// The next complete event; `Ok(None)` at a clean end of stream; `Err` when the connection broke or an event
    /// outgrew the limit.
    pub async fn next_event(&mut self) -> Result<Option<SseEvent>, SseError> {
        if self.translator.is_none() {
            return self.next_raw().await;
        }
        loop {
            let Some(t) = self.translator.as_deref_mut() else { return Ok(None) };
            if let Some(event) = t.pending.pop_front() {
                return Ok(Some(event));
            }
            if t.finished {
                return Ok(None);
            }
            let Some(raw) = self.next_raw().await? else { return Ok(None) };
            let Some(t) = self.translator.as_deref_mut() else { return Ok(None) };
            t.out.clear();
            match t.translator.event(&raw, &mut t.out) {
                Ok(StreamStatus::Continue) => {}
                Ok(StreamStatus::Finished) => t.finished = true,
                Ok(StreamStatus::Failed { class, message }) => {
                    t.finished = true;
                    // A failure before any content: the held role chunk is not worth sending.
                    t.held = None;
                    self.failed = Some(class);
                    t.pending.push_back(parse_event(stream_error_event(class, &message)));
                    continue;
                }
                // Like an OpenAI stream's malformed chunk: skipped.
                Err(_) => continue,
            }
            // Complete events, each ending with a blank line: one buffer, sliced without copies.
            // One copy into a buffer of its own; `out` keeps its capacity for the next event.
            let mut all = Bytes::copy_from_slice(&t.out);
            if all.is_empty() {
                continue;
            }
            // The provider's opening event (Anthropic `message_start`) says nothing yet: its role chunk is held back
            // until the answer's first content, so an error right after it still falls back before the client saw a
            // byte.
            if !t.opened && !t.finished {
                t.opened = true;
                if find_blank_line(&all).is_some_and(|end| end + 2 == all.len()) {
                    t.held = Some(all);
                    continue;
                }
            }
            if let Some(held) = t.held.take() {
                t.pending.push_back(own_event(held));
            }
            while let Some(end) = find_blank_line(&all) {
                t.pending.push_back(own_event(all.split_to(end + 2)));
            }
            if t.finished {
                self.drain_ready();
            }
        }
    }

    /// After the answer's last event: reads whatever of the body has already arrived (trailing events, the end of the
    /// body) without waiting, so that a body that is complete is read to its end and its connection goes back to the
    /// pool instead of being closed when the reader is dropped.
    pub fn drain_ready(&mut self) {
        use futures_util::FutureExt as _;
        for _ in 0..8 {
            match self.next_raw().now_or_never() {
                Some(Ok(Some(_))) => {}
                _ => return,
            }
        }
    }

    async fn next_raw(&mut self) -> Result<Option<SseEvent>, SseError> {
        loop {
            let from = self.scanned.saturating_sub(1).min(self.buffer.len());
            if let Some(end) = find_blank_line(&self.buffer[from..]).map(|i| i + from) {
                // The event's bytes leave the buffer without a copy.
                let raw = self.buffer.split_to(end + 2).freeze();
                self.scanned = 0;
                return self.within_limit(parse_event(raw));
            }
            self.scanned = self.buffer.len();
            if self.ended {
                if self.buffer.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                // A last event without its blank line: normalised to end with one.
                let mut raw = std::mem::take(&mut self.buffer);
                while raw.last() == Some(&b'\n') {
                    raw.truncate(raw.len() - 1);
                }
                raw.extend_from_slice(b"\n\n");
                self.scanned = 0;
                return self.within_limit(parse_event(raw.freeze()));
            }
            // No blank line yet, but the last byte may be the first `\n` of one: past that, the event is too large
            // whatever comes next.
            if self.buffer.len() > self.max_event.saturating_add(1) {
                return Err(SseError::TooLarge(self.max_event));
            }
            match self.stream.next().await {
                None => self.ended = true,
                Some(Err(_)) => return Err(SseError::Broken),
                // CR is dropped (CRLF and CR line ends become LF); the usual chunk has none and is copied whole.
                Some(Ok(chunk)) if memchr::memchr(b'\r', &chunk).is_none() => self.buffer.extend_from_slice(&chunk),
                Some(Ok(chunk)) => self.buffer.extend(chunk.iter().filter(|b| **b != b'\r')),
            }
        }
    }

    /// The limit applies to the event as handed out (without its closing blank line), however its bytes arrived: a
    /// whole oversized event in one chunk is refused like one trickling in.
    fn within_limit(&self, event: SseEvent) -> Result<Option<SseEvent>, SseError> {
        if event.raw.len().saturating_sub(2) > self.max_event {
            return Err(SseError::TooLarge(self.max_event));
        }
        Ok(Some(event))
    }
}

/// Built once: `memmem::find` builds a searcher on every call, which showed in profiles of long streams.
static BLANK_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\n\n"));

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    BLANK_LINE.find(buf)
}

/// An event the translator wrote (`data: <payload>\n\n`, one line, valid UTF-8 as serde_json writes it): its payload
/// is sliced out without scanning it again.
fn own_event(raw: Bytes) -> SseEvent {
    match raw.strip_prefix(b"data: ").map(|rest| rest.len()) {
        Some(rest) if rest >= 2 && raw.ends_with(b"\n\n") && std::str::from_utf8(&raw[6..raw.len() - 2]).is_ok() => {
            let data = SseData(raw.slice(6..raw.len() - 2));
            SseEvent { raw, data }
        }
        _ => parse_event(raw),
    }
}

/// `raw` ends with a blank line. The usual event has one `data:` line, whose payload is then a slice of `raw`; several
/// are joined with `\n` as the SSE rules say.
fn parse_event(raw: Bytes) -> SseEvent {
    let body = &raw[..raw.len().saturating_sub(2)];
    let mut first: Option<(usize, usize)> = None;
    let mut joined: Option<Vec<u8>> = None;
    let mut at = 0;
    for line in body.split(|b| *b == b'\n') {
        let start = at;
        at += line.len() + 1;
        let Some(rest) = line.strip_prefix(b"data:") else { continue };
        let skip = 5 + usize::from(rest.first() == Some(&b' '));
        let piece = (start + skip, start + line.len());
        match (&mut joined, first) {
            (None, None) => first = Some(piece),
            (None, Some((a, b))) => {
                let mut all = raw[a..b].to_vec();
                all.push(b'\n');
                all.extend_from_slice(&raw[piece.0..piece.1]);
                joined = Some(all);
            }
            (Some(all), _) => {
                all.push(b'\n');
                all.extend_from_slice(&raw[piece.0..piece.1]);
            }
        }
    }
    let data = match (joined, first) {
        (Some(all), _) => Bytes::from(all),
        (None, Some((a, b))) => raw.slice(a..b),
        (None, None) => Bytes::new(),
    };
    SseEvent { data: SseData::new(data), raw }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_found_at_the_end_of_a_body() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"the \"usage\" word"}}],"usage": {"prompt_tokens":3,"completion_tokens":24,"total_tokens":27,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        assert_eq!(usage_in_body(body), Some(Usage { prompt_tokens: 3, completion_tokens: 24 }));
        assert_eq!(usage_in_body(br#"{"usage":null}"#), None);
        assert_eq!(usage_in_body(br#"{"choices":[]}"#), None);
        assert_eq!(usage_in_body(br#"{"usage": {"prompt_tokens": 1"#), None);
        assert_eq!(
            usage_in_body(br#"{"usage":{"prompt_tokens":5}}"#),
            Some(Usage { prompt_tokens: 5, completion_tokens: 0 })
        );
    }

    fn reader(chunks: Vec<&'static str>) -> SseReader {
        SseReader::new(futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c)))), 1 << 20)
    }

    #[tokio::test]
    async fn an_event_larger_than_the_limit_is_refused_without_buffering_the_rest() {
        let big = "x".repeat(5000);
        let chunks = vec!["data: {\"a\":1}\n\n".to_owned(), format!("data: {big}"), big.clone(), "\n\n".to_owned()];
        let mut r = SseReader::new(futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c)))), 4096);
        assert_eq!(r.next_event().await.unwrap().unwrap().data, "{\"a\":1}");
        assert_eq!(r.next_event().await.unwrap_err(), SseError::TooLarge(4096));
        assert!(r.buffer.len() <= 4096 + 5006, "stops reading once over the limit: {}", r.buffer.len());
    }

    /// Found by `sse_reader_prop_chunking_does_not_matter`: the limit was only checked before reading more, so an
    /// oversized event that arrived whole (or ended in the chunk that pushed it over) was handed out, and an event of
    /// exactly the limit was refused when its blank line came byte by byte.
    #[tokio::test]
    async fn the_event_limit_holds_however_the_event_arrives() {
        let read = |text: String, chunk: usize| {
            let chunks: Vec<reqwest::Result<Bytes>> =
                text.into_bytes().chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            SseReader::new(futures_util::stream::iter(chunks), 64)
        };
        for chunk in [1, 7, 1000] {
            let over = format!("data: {}\n\n", "x".repeat(59));
            assert_eq!(read(over, chunk).next_event().await.unwrap_err(), SseError::TooLarge(64), "chunks of {chunk}");
            let trailing = format!("data: {}", "x".repeat(59));
            assert_eq!(read(trailing, chunk).next_event().await.unwrap_err(), SseError::TooLarge(64));
            let at_limit = format!("data: {}\n\n", "x".repeat(58));
            let event = read(at_limit, chunk).next_event().await.unwrap().unwrap();
            assert_eq!(event.data.len(), 58, "chunks of {chunk}");
        }
    }

    #[tokio::test]
    async fn data_lines_are_joined_and_a_single_one_is_not_copied() {
        let mut r =
            reader(vec![": comment\nevent: x\ndata: one\ndata:two\n\n", "data: {\"a\":1}\nid: 7\n\n", "data: \u{e9}"]);
        let e = r.next_event().await.unwrap().unwrap();
        assert_eq!(e.data, "one\ntwo");
        assert_eq!(&e.raw[..], b": comment\nevent: x\ndata: one\ndata:two\n\n");
        let e = r.next_event().await.unwrap().unwrap();
        assert_eq!(e.data, "{\"a\":1}");
        let (raw, data) = (e.raw.as_ptr() as usize, e.data.as_ptr() as usize);
        assert!(data >= raw && data < raw + e.raw.len(), "the payload is a view into the event's bytes");
        // The last event without its blank line is normalised.
        let e = r.next_event().await.unwrap().unwrap();
        assert_eq!((e.data.to_string(), &e.raw[..]), ("\u{e9}".to_owned(), "data: \u{e9}\n\n".as_bytes()));
        assert!(r.next_event().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn events_split_across_chunks_and_crlf() {
        let mut r = reader(vec!["data: {\"a\"", ":1}\r\n\r\nda", "ta: [DONE]\n\n"]);
        let e = r.next_event().await.unwrap().unwrap();
        assert_eq!(e.data, "{\"a\":1}");
        assert_eq!(&e.raw[..], b"data: {\"a\":1}\n\n");
        assert!(matches!(r.next_event().await.unwrap().unwrap().json(), EventData::Done));
        assert!(r.next_event().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_blank_line_split_between_chunks_still_ends_the_event() {
        let mut r = reader(vec!["data: {\"a\":1}\n", "\ndata: {\"b\"", ":2}\n", "\n"]);
        assert_eq!(r.next_event().await.unwrap().unwrap().data, "{\"a\":1}");
        assert_eq!(r.next_event().await.unwrap().unwrap().data, "{\"b\":2}");
        assert!(r.next_event().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn trailing_event_without_blank_line_and_comments() {
        let mut r = reader(vec![": keep-alive\n\n", "data: {not json\n\n", "data: {\"b\":2}"]);
        assert!(matches!(r.next_event().await.unwrap().unwrap().json(), EventData::Empty));
        assert!(matches!(r.next_event().await.unwrap().unwrap().json(), EventData::Malformed));
        assert!(matches!(r.next_event().await.unwrap().unwrap().json(), EventData::Json(_)));
        assert!(r.next_event().await.unwrap().is_none());
    }

    use futures_util::FutureExt as _;
    use proptest::collection::vec;
    use proptest::prelude::{Just, Strategy as _, any, prop_oneof};

    /// How a read of a whole stream ended.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum End {
        Clean,
        Error(SseError),
    }

    /// Every event (raw bytes and data) and how the stream ended, for `bytes` cut at the given chunk lengths (the
    /// rest in one last chunk; zero lengths are empty chunks).
    fn read_all(bytes: &[u8], cuts: &[usize], max_event: usize) -> (Vec<(Vec<u8>, String)>, End) {
        let mut chunks = Vec::new();
        let mut rest = bytes;
        for &cut in cuts {
            let (head, tail) = rest.split_at(cut.min(rest.len()));
            chunks.push(Ok(Bytes::copy_from_slice(head)));
            rest = tail;
        }
        chunks.push(Ok(Bytes::copy_from_slice(rest)));
        let mut reader = SseReader::new(futures_util::stream::iter(chunks), max_event);
        let mut events = Vec::new();
        loop {
            // The stream is always ready, so every read completes at once.
            match reader.next_event().now_or_never().expect("an in-memory stream never waits") {
                Ok(Some(event)) => events.push((event.raw.to_vec(), event.data.to_string())),
                Ok(None) => return (events, End::Clean),
                Err(e) => return (events, End::Error(e)),
            }
        }
    }

    /// Byte streams shaped like SSE, with the parts that trip readers up: CR/LF mixes, `data:` with and without a
    /// space, comments, other fields, long lines, invalid UTF-8 and arbitrary bytes.
    fn sse_bytes() -> impl proptest::prelude::Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"data: ".to_vec()),
            Just(b"data:".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n\n".to_vec()),
            Just(b": keep-alive".to_vec()),
            Just(b"event: x".to_vec()),
            Just(b"{\"a\":1}".to_vec()),
            Just(b"[DONE]".to_vec()),
            Just(b" ".to_vec()),
            Just(vec![0xff, 0xfe]),
            Just("\u{e9}\u{1F600}".as_bytes().to_vec()),
            (1usize..120).prop_map(|n| vec![b'x'; n]),
            vec(any::<u8>(), 0..8),
        ];
        prop_oneof![
            4 => vec(piece, 0..30).prop_map(|pieces| pieces.concat()),
            1 => vec(any::<u8>(), 0..300),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        /// However the same bytes are chunked, the reader never panics, produces the same events and the same end,
        /// and no event it hands out (without its closing blank line) is larger than the limit.
        #[test]
        fn sse_reader_prop_chunking_does_not_matter(
            bytes in sse_bytes(),
            cuts in vec(prop_oneof![Just(0usize), 1usize..4, 1usize..200], 0..60),
            max_event in prop_oneof![8usize..64, 64usize..400, Just(1 << 20)],
        ) {
            let whole = read_all(&bytes, &[], max_event);
            let chunked = read_all(&bytes, &cuts, max_event);
            proptest::prop_assert_eq!(&chunked, &whole);
            for (raw, data) in &whole.0 {
                proptest::prop_assert!(raw.len() <= max_event + 2, "event of {} bytes, limit {}", raw.len(), max_event);
                proptest::prop_assert!(raw.ends_with(b"\n\n"));
                proptest::prop_assert!(!raw.contains(&b'\r'));
                // Raw bytes pass through as sent; the payload is the lossy UTF-8 reading of its lines.
                proptest::prop_assert!(data.len() <= String::from_utf8_lossy(raw).len());
            }
        }
    }
}
