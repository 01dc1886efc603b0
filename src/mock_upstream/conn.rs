//! One connection: the keep-alive loop, routing, the scripted decision and its execution on the socket.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng as _;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::answers::{self, DONE_EVENT, FULL_ANSWER, MALFORMED_EVENT, MODELS_BODY, StreamEvents};
use super::behavior::{self, Behavior};
use super::dialect::{self, Dialect, Stop, Turn};
use super::http::{self, BodyKind, Head, Method, ParseError};
use super::responses::{self as resp, ResponsesEvents, Stored};
use super::surface::{self, SurfaceCall};
use super::{SeenRequest, Shared, StreamGuard};
use super::{anthropic, gemini};

mod native;

const JSON: &str = "application/json";

/// Serves one connection until the client leaves, an error, or a fault closes it.
pub(super) async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let mut conn = Conn {
        stream,
        shared,
        buf: Vec::with_capacity(8192),
        out: Vec::with_capacity(4096),
        ev: Vec::with_capacity(512),
        burst: false,
    };
    loop {
        match conn.next().await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Close) => {
                let _ = conn.stream.shutdown().await;
                return;
            }
            // Reset (SO_LINGER 0 is set) or an I/O error: just drop the socket.
            Ok(Flow::Abort) | Err(_) => return,
        }
    }
}

enum Flow {
    Continue,
    Close,
    Abort,
}

struct Conn {
    stream: TcpStream,
    shared: Arc<Shared>,
    /// Bytes read and not yet consumed (a request may be pipelined after the current one).
    buf: Vec<u8>,
    /// The response (or the next part of a streamed one) being written.
    out: Vec<u8>,
    /// Scratch: a response body or one SSE event.
    ev: Vec<u8>,
    /// Events are framed into `out` and written all at once at the end ([`Behavior::StreamBurst`]).
    burst: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Moderations,
    Images,
    Speech,
    Transcriptions,
    /// Anthropic's `POST /v1/messages`.
    Messages,
    /// Gemini's `…:generateContent`.
    GenerateContent,
    /// Gemini's `…:streamGenerateContent` (`sse`: with `alt=sse`).
    StreamGenerateContent {
        sse: bool,
    },
}

impl Endpoint {
    fn dialect(self, azure: bool) -> Dialect {
        match self {
            Endpoint::Messages => Dialect::Anthropic,
            Endpoint::GenerateContent | Endpoint::StreamGenerateContent { .. } => Dialect::Gemini,
            _ if azure => Dialect::Azure,
            _ => Dialect::OpenAi,
        }
    }
}

/// A call about a stored Responses API response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoredOp {
    Get,
    Delete,
    Cancel,
    InputItems,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ControlOp {
    Script,
    InvalidKey,
    NoQuotaKey,
    RejectsPrefill,
    Requests,
    Clear,
    Health,
    Unknown,
}

enum Route {
    Api {
        endpoint: Endpoint,
        deployment: Option<String>,
    },
    Models,
    Stored {
        id: String,
        op: StoredOp,
    },
    Control(ControlOp),
    AzureNotFound,
    /// An unknown path under Gemini's `/v1beta/`.
    GeminiNotFound,
    NotFound,
}

/// `POST /v1beta/models/{model}:generateContent` and `…:streamGenerateContent` (also under `/v1/`): the endpoint and
/// the model.
fn gemini_route(method: Method, path: &str, query: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v1beta/models/").or_else(|| path.strip_prefix("/v1/models/"))?;
    let (model, op) = rest.rsplit_once(':')?;
    let sse = query.split('&').any(|pair| pair == "alt=sse");
    let endpoint = match op {
        "generateContent" => Endpoint::GenerateContent,
        "streamGenerateContent" => Endpoint::StreamGenerateContent { sse },
        _ => return Some(Route::GeminiNotFound),
    };
    if method != Method::Post || model.is_empty() || model.contains('/') {
        return Some(Route::GeminiNotFound);
    }
    Some(Route::Api { endpoint, deployment: Some(model.to_owned()) })
}

/// The `key` query parameter (Gemini accepts the key there too).
fn query_key(target: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    query.split('&').find_map(|pair| pair.strip_prefix("key=")).filter(|k| !k.is_empty()).map(str::to_owned)
}

fn route(method: Method, target: &str) -> Route {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if let Some(op) = path.strip_prefix("/_mock/") {
        return Route::Control(match op {
            "script" => ControlOp::Script,
            "invalid_key" => ControlOp::InvalidKey,
            "no_quota_key" => ControlOp::NoQuotaKey,
            "rejects_prefill" => ControlOp::RejectsPrefill,
            "requests" => ControlOp::Requests,
            "clear" => ControlOp::Clear,
            "health" => ControlOp::Health,
            _ => ControlOp::Unknown,
        });
    }
    if let Some(rest) = path.strip_prefix("/openai/") {
        let Some((deployment, tail)) = rest.strip_prefix("deployments/").and_then(|r| r.split_once('/')) else {
            return Route::AzureNotFound;
        };
        let endpoint = match tail {
            "chat/completions" => Endpoint::Chat,
            "completions" => Endpoint::Completions,
            "embeddings" => Endpoint::Embeddings,
            "images/generations" => Endpoint::Images,
            "audio/speech" => Endpoint::Speech,
            "audio/transcriptions" => Endpoint::Transcriptions,
            _ => return Route::AzureNotFound,
        };
        let has_version = query.split('&').any(|pair| pair.strip_prefix("api-version=").is_some_and(|v| !v.is_empty()));
        if method != Method::Post || deployment.is_empty() || !has_version {
            return Route::AzureNotFound;
        }
        return Route::Api { endpoint, deployment: Some(deployment.to_owned()) };
    }
    if let Some(rest) = path.strip_prefix("/v1/responses/") {
        let (id, op) = match (rest.split_once('/'), method) {
            (None, Method::Get) => (rest, StoredOp::Get),
            (None, Method::Delete) => (rest, StoredOp::Delete),
            (Some((id, "cancel")), Method::Post) => (id, StoredOp::Cancel),
            (Some((id, "input_items")), Method::Get) => (id, StoredOp::InputItems),
            _ => return Route::NotFound,
        };
        if id.is_empty() {
            return Route::NotFound;
        }
        return Route::Stored { id: id.to_owned(), op };
    }
    if let Some(route) = gemini_route(method, path, query) {
        return route;
    }
    if path.starts_with("/v1beta/") {
        return Route::GeminiNotFound;
    }
    let endpoint = match (method, path) {
        (Method::Post, "/v1/responses") => Endpoint::Responses,
        (Method::Post, "/v1/chat/completions") => Endpoint::Chat,
        (Method::Post, "/v1/completions") => Endpoint::Completions,
        (Method::Post, "/v1/embeddings") => Endpoint::Embeddings,
        (Method::Post, "/v1/moderations") => Endpoint::Moderations,
        (Method::Post, "/v1/images/generations") => Endpoint::Images,
        (Method::Post, "/v1/audio/speech") => Endpoint::Speech,
        (Method::Post, "/v1/audio/transcriptions") => Endpoint::Transcriptions,
        (Method::Post, "/v1/messages") => Endpoint::Messages,
        (Method::Get, "/v1/models") => return Route::Models,
        _ => return Route::NotFound,
    };
    Route::Api { endpoint, deployment: None }
}

/// What a healthy answer needs from the request.
struct Call {
    endpoint: Endpoint,
    dialect: Dialect,
    model: String,
    stream: bool,
    include_usage: bool,
    prompt_tokens: u32,
    last_is_assistant: bool,
    answer: &'static str,
    embed: Option<Box<Embed>>,
    /// Responses API only (boxed: the other endpoints need none of it).
    responses: Option<Box<ResponsesCall>>,
    /// Moderations, images and speech ([`surface`]).
    surface: Option<Box<SurfaceCall>>,
    /// Anthropic and Gemini: how the answer ends.
    turn: Option<Box<Turn>>,
}

/// What a Responses API answer needs from the request.
#[derive(Default)]
struct ResponsesCall {
    /// The stored response's owner.
    key: String,
    input: Value,
    previous: Option<String>,
    store: bool,
}

struct Embed {
    seeds: Vec<u64>,
    dims: usize,
    base64: bool,
}

/// A 400 `invalid_request_error` for a request the real API would refuse.
struct Rejection {
    message: std::borrow::Cow<'static, str>,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl Call {
    fn previous(&self) -> Option<&str> {
        self.responses.as_ref().and_then(|r| r.previous.as_deref())
    }

    /// A Responses answer the mock keeps (`store` is not `false`).
    fn stores(&self) -> bool {
        self.responses.as_ref().is_some_and(|r| r.store)
    }

    fn new(
        endpoint: Endpoint,
        dialect: Dialect,
        body: &Value,
        model: String,
        stream: bool,
        key: &str,
    ) -> Result<Call, Rejection> {
        let mut call = Call {
            endpoint,
            dialect,
            model,
            stream: stream && endpoint != Endpoint::Embeddings,
            include_usage: body.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true),
            prompt_tokens: 0,
            last_is_assistant: false,
            answer: FULL_ANSWER,
            embed: None,
            responses: None,
            surface: None,
            turn: None,
        };
        let invalid = |message| Rejection { message, param: None, code: None };
        match endpoint {
            Endpoint::Messages => {
                let r = anthropic::parse(body).map_err(invalid)?;
                call.prompt_tokens = r.prompt_tokens;
                call.last_is_assistant = r.last_is_assistant;
                call.answer = r.answer;
                call.turn = Some(Box::new(Turn { stop: r.stop }));
            }
            Endpoint::GenerateContent | Endpoint::StreamGenerateContent { .. } => {
                if endpoint == (Endpoint::StreamGenerateContent { sse: false }) {
                    return Err(invalid(gemini::ARRAY_STREAM_UNSUPPORTED.into()));
                }
                let r = gemini::parse(body).map_err(invalid)?;
                call.prompt_tokens = r.prompt_tokens;
                call.last_is_assistant = r.last_is_model;
                call.answer = r.answer;
                call.turn = Some(Box::new(Turn { stop: r.stop }));
            }
            Endpoint::Moderations | Endpoint::Images | Endpoint::Speech | Endpoint::Transcriptions => {
                let parsed = match endpoint {
                    Endpoint::Moderations => surface::moderation(body),
                    Endpoint::Images => surface::image(body, &call.model),
                    Endpoint::Transcriptions => surface::transcription(body),
                    _ => surface::speech(body),
                };
                let parsed =
                    parsed.map_err(|(message, param, code)| Rejection { message: message.into(), param, code })?;
                call.prompt_tokens = answers::tokens_of_chars(parsed.chars());
                // Speech is sent in chunks, so the stream faults (cut, stall, slow first bytes) apply to it.
                call.stream = endpoint == Endpoint::Speech;
                call.surface = Some(Box::new(parsed));
            }
            Endpoint::Responses => {
                let r = call.responses.insert(Box::new(ResponsesCall {
                    key: key.to_owned(),
                    input: body.get("input").cloned().unwrap_or(Value::Null),
                    previous: body.get("previous_response_id").and_then(Value::as_str).map(str::to_owned),
                    store: body.get("store") != Some(&Value::Bool(false)),
                }));
                if r.input.is_null() && r.previous.is_none() {
                    return Err(Rejection {
                        message: "Missing required parameter: 'input'.".into(),
                        param: Some("input"),
                        code: Some("missing_required_parameter"),
                    });
                }
                if !matches!(r.input, Value::Null | Value::String(_) | Value::Array(_)) {
                    return Err(Rejection {
                        message: "Invalid type for 'input': expected one of a string or array of input items.".into(),
                        param: Some("input"),
                        code: Some("invalid_type"),
                    });
                }
                call.prompt_tokens = answers::tokens_of_chars(resp::input_chars(&r.input));
            }
            Endpoint::Chat => {
                let Some(messages) = body.get("messages").and_then(Value::as_array) else {
                    return Err(Rejection {
                        message: "Missing required parameter: 'messages'.".into(),
                        param: Some("messages"),
                        code: Some("missing_required_parameter"),
                    });
                };
                let chars = messages.iter().filter_map(|m| m.get("content")).map(answers::content_chars).sum();
                call.prompt_tokens = answers::tokens_of_chars(chars);
                let last = messages.last();
                let text = last.and_then(|m| m.get("content")).and_then(answers::content_text);
                match last.and_then(|m| m.get("role")).and_then(Value::as_str) {
                    Some("assistant") => {
                        call.last_is_assistant = true;
                        call.answer = answers::answer_after(text.as_deref());
                    }
                    // A user turn quoting the cut-off answer and asking for the rest.
                    Some("user") => {
                        if let Some(answer) = text.as_deref().and_then(answers::answer_to_instruction) {
                            call.answer = answer;
                        }
                    }
                    _ => {}
                }
            }
            Endpoint::Completions => {
                let chars = body.get("prompt").map_or(0, answers::input_chars);
                call.prompt_tokens = answers::tokens_of_chars(chars);
                // A completion model continues its prompt: a prompt ending in the start of the answer gets the rest.
                if let Some(prompt) = body.get("prompt").and_then(Value::as_str) {
                    call.answer = answers::continuation_of_prompt(prompt);
                }
            }
            Endpoint::Embeddings => {
                let Some(input) = body.get("input") else {
                    return Err(Rejection {
                        message: "Missing required parameter: 'input'.".into(),
                        param: Some("input"),
                        code: Some("missing_required_parameter"),
                    });
                };
                let Some(seeds) = answers::embedding_seeds(input) else {
                    return Err(Rejection {
                        message: "'$.input' is invalid. Please check the API reference: \
                                  https://platform.openai.com/docs/api-reference."
                            .into(),
                        param: None,
                        code: None,
                    });
                };
                let dims = match body.get("dimensions") {
                    None | Some(Value::Null) => answers::embedding_dimension(&call.model),
                    Some(d) => match d.as_u64() {
                        Some(d @ 1..=16_384) => d as usize,
                        _ => {
                            return Err(Rejection {
                                message: "Invalid value for 'dimensions': must be an integer between 1 and 16384."
                                    .into(),
                                param: Some("dimensions"),
                                code: Some("invalid_value"),
                            });
                        }
                    },
                };
                let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
                call.prompt_tokens = answers::tokens_of_chars(answers::input_chars(input));
                call.embed = Some(Box::new(Embed { seeds, dims, base64 }));
            }
        }
        Ok(call)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Normal,
    Cut(u32),
    Stall(u32),
    KeepAlive(u32, u64),
    Malformed(u32),
    MissingDone,
    Burst,
    /// After n pieces, the dialect's in-band error event for this status, then the end of the body.
    InBandError(u32, u16),
}

/// The bytes a dialect's stream faults write.
#[derive(Clone, Copy)]
struct Framing {
    malformed: &'static [u8],
    keep_alive: &'static [u8],
}

const OPENAI_FRAMING: Framing = Framing { malformed: MALFORMED_EVENT, keep_alive: b": keep-alive\n\n" };

enum Action {
    /// `out` holds a complete response: write it after `delay`.
    Send { delay: Duration, keep_alive: bool },
    /// A healthy answer after `pre`; when streaming, `first` more before the first event (after the headers).
    Healthy { call: Call, pre: Duration, first: Duration, mode: Mode, keep_alive: bool },
    /// Reset the connection without answering.
    Reset,
    /// Never answer; wait for the client to leave.
    Hang,
}

/// What the key and body checks decided.
enum Verdict {
    Answered,
    MissingKey,
    InvalidKey(String),
    NoQuota,
    /// Anthropic without an `anthropic-version` header.
    NoVersion,
    Models,
    BadJson,
    NoModel,
    Rejected(Rejection),
    PrefillRejected,
    PreviousNotFound(String),
    Step(Call, Option<(Behavior, Instant)>),
}

#[derive(Deserialize)]
struct ScriptBody {
    target: String,
    steps: Vec<Behavior>,
}

#[derive(Deserialize)]
struct KeyBody {
    key: String,
}

#[derive(Deserialize)]
struct TargetBody {
    target: String,
}

/// The stock message of an error with `status` in `dialect`.
fn stock_message(dialect: Dialect, status: u16) -> &'static str {
    if dialect.is_native() { dialect::default_message(dialect, status) } else { behavior::default_message(status) }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// JSON, or a `multipart/form-data` upload as the JSON of its fields ([`surface::form_json`]).
fn parse_body(head: &Head, bytes: &[u8]) -> Option<Value> {
    match head.content_type.as_deref().and_then(crate::engine::multipart::boundary) {
        Some(boundary) => surface::form_json(bytes, boundary),
        None => parse_json(bytes),
    }
}

fn parse_json(bytes: &[u8]) -> Option<Value> {
    if bytes.is_empty() { None } else { serde_json::from_slice(bytes).ok() }
}

impl Conn {
    /// Reads more bytes into `buf`; 0 at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(8192);
        self.stream.read_buf(&mut self.buf).await
    }

    async fn send_out(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Reads and answers one request.
    async fn next(&mut self) -> io::Result<Flow> {
        let head = loop {
            match http::parse_head(&self.buf) {
                Ok(Some(head)) => break head,
                Ok(None) => {
                    if self.fill().await? == 0 {
                        return Ok(Flow::Close);
                    }
                }
                Err(error) => return self.reject(error).await,
            }
        };
        let mut sent_continue = false;
        let body = match head.body {
            BodyKind::Length(n) => {
                let end = head.len + n;
                while self.buf.len() < end {
                    if head.expect_continue && !sent_continue {
                        self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                        sent_continue = true;
                    }
                    if self.fill().await? == 0 {
                        return Ok(Flow::Close);
                    }
                }
                let body = parse_body(&head, &self.buf[head.len..end]);
                self.buf.drain(..end);
                body
            }
            BodyKind::Chunked => loop {
                match http::parse_chunked(&self.buf[head.len..]) {
                    Ok(Some((bytes, used))) => {
                        self.buf.drain(..head.len + used);
                        break parse_body(&head, &bytes);
                    }
                    Ok(None) => {
                        if head.expect_continue && !sent_continue {
                            self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                            sent_continue = true;
                        }
                        if self.fill().await? == 0 {
                            return Ok(Flow::Close);
                        }
                    }
                    Err(error) => return self.reject(error).await,
                }
            },
        };
        if self.buf.capacity() > 1 << 20 && self.buf.len() <= 8192 {
            // Do not keep a huge body's buffer for the rest of the connection.
            self.buf.shrink_to(8192);
        }
        let action = self.decide(head, body);
        self.act(action).await
    }

    /// Answers a request that cannot be parsed, then closes.
    async fn reject(&mut self, error: ParseError) -> io::Result<Flow> {
        let (status, message) = match error {
            ParseError::Bad(message) => (400, message),
            ParseError::HeadTooLarge => (431, "Request header fields too large."),
            ParseError::BodyTooLarge => (413, "Request body too large."),
        };
        self.ev.clear();
        answers::write_openai_error(&mut self.ev, message, "invalid_request_error", None, None);
        self.out.clear();
        http::write_response(&mut self.out, status, JSON, &[], false, &self.ev);
        self.send_out().await?;
        Ok(Flow::Close)
    }

    fn reply_json(&mut self, status: u16, keep_alive: bool, extra: &[(&str, &str)]) {
        self.out.clear();
        http::write_response(&mut self.out, status, JSON, extra, keep_alive, &self.ev);
    }

    fn reply_openai_error(
        &mut self,
        status: u16,
        keep_alive: bool,
        message: &str,
        r#type: &str,
        param: Option<&str>,
        code: Option<&str>,
    ) {
        self.ev.clear();
        answers::write_openai_error(&mut self.ev, message, r#type, param, code);
        self.reply_json(status, keep_alive, &[]);
    }

    fn reply_azure_error(&mut self, status: u16, keep_alive: bool, message: &str) {
        self.ev.clear();
        answers::write_azure_error(&mut self.ev, &status.to_string(), message);
        self.reply_json(status, keep_alive, &[]);
    }

    fn reply_prefill_rejected(&mut self, keep_alive: bool) {
        let message = behavior::PREFILL_REJECTED_MESSAGE;
        self.reply_openai_error(400, keep_alive, message, "invalid_request_error", None, None);
    }

    fn decide(&mut self, head: Head, body: Option<Value>) -> Action {
        let keep_alive = head.keep_alive;
        let send = Action::Send { delay: Duration::ZERO, keep_alive };
        let route = route(head.method, &head.target);
        let routed = !matches!(route, Route::NotFound | Route::AzureNotFound | Route::GeminiNotFound);
        let (endpoint, deployment) = match route {
            Route::Control(op) => {
                self.control(op, head.method, body, keep_alive);
                return send;
            }
            Route::Stored { id, op } => {
                self.stored(head, &id, op);
                return send;
            }
            Route::NotFound => {
                let path = head.target.split_once('?').map_or(head.target.as_str(), |(p, _)| p);
                let message = format!("Invalid URL ({} {path})", head.method_name);
                self.reply_openai_error(404, keep_alive, &message, "invalid_request_error", None, None);
                (None, None)
            }
            Route::AzureNotFound => {
                self.reply_azure_error(404, keep_alive, "Resource not found");
                (None, None)
            }
            Route::GeminiNotFound => {
                self.reply_error(Dialect::Gemini, 404, None, gemini::NOT_FOUND, None, keep_alive);
                (None, None)
            }
            Route::Models => (None, None),
            Route::Api { endpoint, deployment } => (Some(endpoint), deployment),
        };
        let dialect = endpoint.map_or(Dialect::OpenAi, |e| e.dialect(deployment.is_some()));
        let azure = dialect == Dialect::Azure;
        let versioned = dialect != Dialect::Anthropic || head.anthropic_version.is_some();
        let key = match dialect {
            Dialect::OpenAi => head.bearer,
            Dialect::Azure => head.api_key.or(head.bearer),
            // Anthropic's SDKs from 2.x send the key as a bearer token.
            Dialect::Anthropic => head.x_api_key.or(head.bearer),
            Dialect::Gemini => head.goog_api_key.or_else(|| query_key(&head.target)),
        };
        let body_ok = body.is_some();
        let body = body.unwrap_or(Value::Null);
        let model = deployment.or_else(|| body.get("model").and_then(Value::as_str).map(str::to_owned)).or_else(|| {
            // OpenAI's defaults for the endpoints where `model` is optional.
            match endpoint {
                Some(Endpoint::Moderations) => Some(surface::DEFAULT_MODERATION_MODEL.to_owned()),
                Some(Endpoint::Images) => Some(surface::DEFAULT_IMAGE_MODEL.to_owned()),
                _ => None,
            }
        });
        let stream = match endpoint {
            Some(Endpoint::StreamGenerateContent { .. }) => true,
            Some(Endpoint::GenerateContent) => false,
            _ => body.get("stream").and_then(Value::as_bool) == Some(true),
        };
        // Built before taking the lock; only used when the key and JSON checks pass.
        let call = match (endpoint, &model) {
            (Some(endpoint), Some(model)) if body_ok && routed => {
                Some(Call::new(endpoint, dialect, &body, model.clone(), stream, key.as_deref().unwrap_or_default()))
            }
            _ => None,
        };

        let at = Instant::now();
        let verdict = {
            let mut state = self.shared.lock();
            let verdict = if !routed {
                Verdict::Answered
            } else {
                match &key {
                    None => Verdict::MissingKey,
                    Some(k) if state.invalid_keys.contains(k) => Verdict::InvalidKey(answers::mask_key(k)),
                    Some(k) if state.no_quota_keys.contains(k) => Verdict::NoQuota,
                    Some(_) if !versioned => Verdict::NoVersion,
                    Some(_) if endpoint.is_none() => Verdict::Models,
                    Some(_) if !body_ok => Verdict::BadJson,
                    Some(k) => match call {
                        None => Verdict::NoModel,
                        Some(Err(rejection)) => Verdict::Rejected(rejection),
                        Some(Ok(c)) if c.previous().is_some_and(|p| state.response_of(p, k).is_none()) => {
                            Verdict::PreviousNotFound(c.previous().unwrap_or_default().to_owned())
                        }
                        // Like the other request checks, before (and without consuming) a script step.
                        Some(Ok(c)) if c.last_is_assistant && state.rejects_prefill.contains(&c.model) => {
                            Verdict::PrefillRejected
                        }
                        Some(Ok(call)) => {
                            let step = state.next_step(&call.model);
                            Verdict::Step(call, step)
                        }
                    },
                }
            };
            state.record(SeenRequest { path: head.target, model, api_key: key, stream, body, at });
            verdict
        };

        match verdict {
            Verdict::Answered => send,
            Verdict::Step(call, step) => self.behave(call, step, keep_alive),
            verdict if dialect.is_native() => {
                self.native_refusal(dialect, verdict, keep_alive);
                send
            }
            Verdict::MissingKey if azure => {
                self.reply_azure_error(
                    401,
                    keep_alive,
                    "Access denied due to missing subscription key. Make sure to include subscription key when \
                     making requests to an API.",
                );
                send
            }
            Verdict::MissingKey => {
                self.reply_openai_error(
                    401,
                    keep_alive,
                    "You didn't provide an API key. You need to provide your API key in an Authorization header using \
                     Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) \
                     if you're accessing the API from your browser and are prompted for a username. You can obtain an \
                     API key from https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                    None,
                    Some("invalid_api_key"),
                );
                send
            }
            Verdict::InvalidKey(_) if azure => {
                self.reply_azure_error(
                    401,
                    keep_alive,
                    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid \
                     key for an active subscription and use a correct regional API endpoint for your resource.",
                );
                send
            }
            Verdict::InvalidKey(masked) => {
                let message = format!(
                    "Incorrect API key provided: {masked}. You can find your API key at \
                     https://platform.openai.com/account/api-keys."
                );
                let code = Some("invalid_api_key");
                self.reply_openai_error(401, keep_alive, &message, "invalid_request_error", None, code);
                send
            }
            Verdict::NoQuota => {
                self.reply_openai_error(
                    429,
                    keep_alive,
                    "You exceeded your current quota, please check your plan and billing details. For more \
                     information on this error, read the docs: \
                     https://platform.openai.com/docs/guides/error-codes/api-errors.",
                    "insufficient_quota",
                    None,
                    Some("insufficient_quota"),
                );
                send
            }
            Verdict::Models => {
                self.out.clear();
                http::write_response(&mut self.out, 200, JSON, &[], keep_alive, MODELS_BODY);
                send
            }
            Verdict::BadJson => {
                self.reply_openai_error(
                    400,
                    keep_alive,
                    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your \
                     HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid \
                     JSON. If you have trouble figuring out how to fix this, please contact us through our help center \
                     at help.openai.com.)",
                    "invalid_request_error",
                    None,
                    None,
                );
                send
            }
            Verdict::NoModel => {
                let message = "you must provide a model parameter";
                self.reply_openai_error(400, keep_alive, message, "invalid_request_error", None, None);
                send
            }
            Verdict::Rejected(r) => {
                self.reply_openai_error(400, keep_alive, &r.message, "invalid_request_error", r.param, r.code);
                send
            }
            Verdict::NoVersion => {
                let message = anthropic::VERSION_REQUIRED;
                self.reply_openai_error(400, keep_alive, message, "invalid_request_error", None, None);
                send
            }
            Verdict::PrefillRejected => {
                self.reply_prefill_rejected(keep_alive);
                send
            }
            Verdict::PreviousNotFound(id) => {
                let message = format!("Previous response with id '{id}' not found.");
                let (param, code) = (Some("previous_response_id"), Some("previous_response_not_found"));
                self.reply_openai_error(404, keep_alive, &message, "invalid_request_error", param, code);
                send
            }
        }
    }

    /// An error in the request's dialect: a native body (see [`dialect::write_error`]) or OpenAI's, whose `type` is
    /// `kind` (or `server_error`).
    fn reply_error(
        &mut self,
        dialect: Dialect,
        status: u16,
        kind: Option<&str>,
        message: &str,
        retry_after: Option<&str>,
        keep_alive: bool,
    ) {
        self.ev.clear();
        if dialect.is_native() {
            dialect::write_error(&mut self.ev, dialect, status, kind, message, retry_after);
        } else {
            answers::write_openai_error(&mut self.ev, message, kind.unwrap_or("server_error"), None, None);
        }
        match retry_after {
            Some(value) => self.reply_json(status, keep_alive, &[("Retry-After", value)]),
            None => self.reply_json(status, keep_alive, &[]),
        }
    }

    /// A native request refused before any script step.
    fn native_refusal(&mut self, dialect: Dialect, verdict: Verdict, keep_alive: bool) {
        let gemini = dialect == Dialect::Gemini;
        let (status, message): (u16, std::borrow::Cow<'static, str>) = match verdict {
            Verdict::MissingKey if gemini => (403, gemini::MISSING_KEY.into()),
            Verdict::MissingKey => (401, anthropic::MISSING_KEY.into()),
            Verdict::InvalidKey(_) if gemini => {
                self.ev.clear();
                gemini::write_invalid_key(&mut self.ev);
                self.reply_json(400, keep_alive, &[]);
                return;
            }
            Verdict::InvalidKey(_) => (401, anthropic::INVALID_KEY.into()),
            Verdict::NoQuota if gemini => (429, gemini::NO_QUOTA.into()),
            Verdict::NoQuota => (400, anthropic::NO_CREDIT.into()),
            Verdict::NoVersion => (400, anthropic::VERSION_REQUIRED.into()),
            Verdict::BadJson if gemini => (400, gemini::BAD_JSON.into()),
            Verdict::BadJson => (400, anthropic::BAD_JSON.into()),
            Verdict::NoModel => (400, anthropic::MODEL_REQUIRED.into()),
            Verdict::Rejected(r) => (400, r.message),
            Verdict::PrefillRejected => (400, dialect::prefill_rejected_message(dialect).into()),
            // Only OpenAI routes get these.
            Verdict::Answered | Verdict::Models | Verdict::PreviousNotFound(_) | Verdict::Step(..) => {
                (404, anthropic::NOT_FOUND.into())
            }
        };
        self.reply_error(dialect, status, None, &message, None, keep_alive);
    }

    /// Turns a scripted step (none: healthy) into what to do on the socket.
    fn behave(&mut self, call: Call, step: Option<(Behavior, Instant)>, keep_alive: bool) -> Action {
        let healthy = |call: Call, mode: Mode| Action::Healthy {
            call,
            pre: Duration::ZERO,
            first: Duration::ZERO,
            mode,
            keep_alive,
        };
        let Some((behavior, set_at)) = step else { return healthy(call, Mode::Normal) };
        let send = Action::Send { delay: Duration::ZERO, keep_alive };
        let stream = call.stream;
        match behavior {
            Behavior::Ok { latency_ms, jitter_ms } => {
                let jitter = if jitter_ms > 0 { rand::thread_rng().gen_range(0..=jitter_ms) } else { 0 };
                let pre = Duration::from_millis(latency_ms.saturating_add(jitter));
                Action::Healthy { call, pre, first: Duration::ZERO, mode: Mode::Normal, keep_alive }
            }
            Behavior::Error { status, r#type, message, retry_after, .. } if call.dialect.is_native() => {
                let message =
                    if message.is_empty() { dialect::default_message(call.dialect, status) } else { &message };
                let message = message.replace("{model}", &call.model);
                self.reply_error(call.dialect, status, Some(&r#type), &message, retry_after.as_deref(), keep_alive);
                send
            }
            Behavior::Error { status, code, r#type, message, param, retry_after } => {
                let message = if message.is_empty() { behavior::default_message(status) } else { &message };
                let message = message.replace("{model}", &call.model);
                self.ev.clear();
                answers::write_openai_error(&mut self.ev, &message, &r#type, param.as_deref(), code.as_deref());
                match retry_after {
                    Some(value) => self.reply_json(status, keep_alive, &[("Retry-After", &value)]),
                    None => self.reply_json(status, keep_alive, &[]),
                }
                send
            }
            Behavior::ContextLimit { max_tokens, .. }
                if call.prompt_tokens > max_tokens && call.dialect.is_native() =>
            {
                let message = dialect::context_limit_message(call.dialect, call.prompt_tokens, max_tokens);
                self.reply_error(call.dialect, 400, None, &message, None, keep_alive);
                send
            }
            Behavior::ContextLimit { max_tokens, with_code } if call.prompt_tokens > max_tokens => {
                let message = format!(
                    "This model's maximum context length is {max_tokens} tokens. However, your messages resulted in \
                     {} tokens. Please reduce the length of the messages.",
                    call.prompt_tokens
                );
                let code = with_code.then_some("context_length_exceeded");
                self.reply_openai_error(400, keep_alive, &message, "invalid_request_error", Some("messages"), code);
                send
            }
            Behavior::ContextLimit { .. } => healthy(call, Mode::Normal),
            Behavior::ResetBeforeHeaders => Action::Reset,
            Behavior::NoResponse => Action::Hang,
            Behavior::SlowFirstToken { delay_ms } => {
                let delay = Duration::from_millis(delay_ms);
                let (pre, first) = if stream { (Duration::ZERO, delay) } else { (delay, Duration::ZERO) };
                Action::Healthy { call, pre, first, mode: Mode::Normal, keep_alive }
            }
            Behavior::StreamCut { after_tokens } if stream => healthy(call, Mode::Cut(after_tokens)),
            Behavior::StreamCut { .. } => Action::Reset,
            Behavior::StreamStall { after_tokens } if stream => healthy(call, Mode::Stall(after_tokens)),
            Behavior::StreamStall { .. } => Action::Hang,
            Behavior::StreamKeepAlive { after_tokens, every_ms } if stream => {
                healthy(call, Mode::KeepAlive(after_tokens, every_ms))
            }
            Behavior::StreamKeepAlive { .. } => Action::Hang,
            Behavior::MalformedChunk { at_token } => healthy(call, Mode::Malformed(at_token)),
            Behavior::StreamBurst => healthy(call, Mode::Burst),
            Behavior::MissingDone => healthy(call, Mode::MissingDone),
            Behavior::StreamError { after_tokens, status } => {
                let status = status.unwrap_or(match call.dialect {
                    Dialect::Anthropic => 529,
                    Dialect::Gemini => 503,
                    Dialect::OpenAi | Dialect::Azure => 500,
                });
                if stream {
                    healthy(call, Mode::InBandError(after_tokens, status))
                } else {
                    let message = stock_message(call.dialect, status).replace("{model}", &call.model);
                    self.reply_error(call.dialect, status, None, &message, None, keep_alive);
                    send
                }
            }
            Behavior::RejectPrefill if call.last_is_assistant && call.dialect.is_native() => {
                let message = dialect::prefill_rejected_message(call.dialect);
                self.reply_error(call.dialect, 400, None, message, None, keep_alive);
                send
            }
            Behavior::RejectPrefill if call.last_is_assistant => {
                self.reply_prefill_rejected(keep_alive);
                send
            }
            Behavior::RejectPrefill => healthy(call, Mode::Normal),
            Behavior::Flapping { down_ms, up_ms } => {
                let period = u128::from(down_ms) + u128::from(up_ms);
                let down = period > 0 && set_at.elapsed().as_millis() % period < u128::from(down_ms);
                if down && call.dialect.is_native() {
                    let (status, message) = dialect::overloaded(call.dialect);
                    self.reply_error(call.dialect, status, None, message, None, keep_alive);
                    send
                } else if down {
                    let message = behavior::OVERLOADED_MESSAGE;
                    self.reply_openai_error(503, keep_alive, message, "server_error", None, None);
                    send
                } else {
                    healthy(call, Mode::Normal)
                }
            }
        }
    }

    /// The `/_mock/...` endpoints (not recorded, no key needed).
    fn control(&mut self, op: ControlOp, method: Method, body: Option<Value>, keep_alive: bool) {
        let bad = |error: &dyn std::fmt::Display| format!("invalid control request: {error}");
        let result: Result<(), String> = match (op, method) {
            (ControlOp::Script, Method::Post) => {
                match serde_json::from_value::<ScriptBody>(body.unwrap_or(Value::Null)) {
                    Ok(script) => {
                        self.shared.script(&script.target, script.steps);
                        Ok(())
                    }
                    Err(error) => Err(bad(&error)),
                }
            }
            (ControlOp::InvalidKey | ControlOp::NoQuotaKey, Method::Post) => {
                match serde_json::from_value::<KeyBody>(body.unwrap_or(Value::Null)) {
                    Ok(KeyBody { key }) => {
                        let mut state = self.shared.lock();
                        if op == ControlOp::InvalidKey {
                            state.invalid_keys.insert(key);
                        } else {
                            state.no_quota_keys.insert(key);
                        }
                        Ok(())
                    }
                    Err(error) => Err(bad(&error)),
                }
            }
            (ControlOp::RejectsPrefill, Method::Post) => {
                match serde_json::from_value::<TargetBody>(body.unwrap_or(Value::Null)) {
                    Ok(TargetBody { target }) => {
                        self.shared.lock().rejects_prefill.insert(target);
                        Ok(())
                    }
                    Err(error) => Err(bad(&error)),
                }
            }
            (ControlOp::Requests, Method::Get) => {
                self.ev.clear();
                let state = self.shared.lock();
                let requests: Vec<&SeenRequest> = state.requests.iter().collect();
                let _ = serde_json::to_writer(&mut self.ev, &requests);
                drop(state);
                self.reply_json(200, keep_alive, &[]);
                return;
            }
            (ControlOp::Clear, Method::Post) => {
                self.shared.clear();
                Ok(())
            }
            (ControlOp::Health, Method::Get) => Ok(()),
            _ => {
                let message = "Unknown control endpoint or method.";
                self.reply_openai_error(404, keep_alive, message, "invalid_request_error", None, None);
                return;
            }
        };
        match result {
            Ok(()) => {
                self.ev.clear();
                self.ev.extend_from_slice(b"{\"ok\":true}");
                self.reply_json(200, keep_alive, &[]);
            }
            Err(message) => {
                self.reply_openai_error(400, keep_alive, &message, "invalid_request_error", None, None);
            }
        }
    }

    async fn act(&mut self, action: Action) -> io::Result<Flow> {
        match action {
            Action::Send { delay, keep_alive } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                self.send_out().await?;
                Ok(if keep_alive { Flow::Continue } else { Flow::Close })
            }
            Action::Reset => Ok(self.reset()),
            Action::Hang => self.hang().await,
            Action::Healthy { call, pre, first, mode, keep_alive } => {
                if !pre.is_zero() {
                    tokio::time::sleep(pre).await;
                }
                if call.stream {
                    self.stream_answer(call, first, mode, keep_alive).await
                } else {
                    self.answer(&call, keep_alive);
                    self.send_out().await?;
                    Ok(if keep_alive { Flow::Continue } else { Flow::Close })
                }
            }
        }
    }

    fn reset(&mut self) -> Flow {
        let _ = self.stream.set_zero_linger();
        Flow::Abort
    }

    /// Holds the connection without answering until the client closes it.
    async fn hang(&mut self) -> io::Result<Flow> {
        loop {
            self.buf.clear();
            if self.fill().await? == 0 {
                return Ok(Flow::Close);
            }
        }
    }

    /// Writes a complete non-streaming healthy answer into `out`.
    fn answer(&mut self, call: &Call, keep_alive: bool) {
        self.ev.clear();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        match (call.endpoint, &call.embed) {
            (Endpoint::Chat, _) => {
                answers::write_chat(&mut self.ev, id, unix_now(), &call.model, call.answer, call.prompt_tokens);
            }
            (Endpoint::Completions, _) => {
                answers::write_completion(&mut self.ev, id, unix_now(), &call.model, call.answer, call.prompt_tokens);
            }
            (Endpoint::Embeddings, Some(e)) => {
                answers::write_embeddings(&mut self.ev, &call.model, &e.seeds, e.dims, e.base64, call.prompt_tokens);
            }
            (Endpoint::Embeddings, None) => {
                answers::write_embeddings(&mut self.ev, &call.model, &[], 0, false, call.prompt_tokens);
            }
            (Endpoint::Moderations | Endpoint::Images | Endpoint::Speech | Endpoint::Transcriptions, _) => {
                if let Some(surface) = &call.surface {
                    let content_type = surface::write_answer(&mut self.ev, surface, &call.model, unix_now());
                    self.out.clear();
                    http::write_response(&mut self.out, 200, content_type, &[], keep_alive, &self.ev);
                    return;
                }
            }
            (Endpoint::Messages, _) => {
                let stop = call.turn.as_ref().map_or(&Stop::End, |t| &t.stop);
                anthropic::write_message(&mut self.ev, id, &call.model, call.answer, stop, call.prompt_tokens);
            }
            (Endpoint::GenerateContent | Endpoint::StreamGenerateContent { .. }, _) => {
                let stop = call.turn.as_ref().map_or(&Stop::End, |t| &t.stop);
                gemini::write_response(&mut self.ev, id, &call.model, call.answer, stop, call.prompt_tokens);
            }
            (Endpoint::Responses, _) => {
                let (rid, stored) = stored_of(call, id, "completed");
                resp::write_response(&mut self.ev, &rid, &stored);
                if call.stores() {
                    self.shared.lock().store_response(rid, stored);
                }
            }
        }
        self.reply_json(200, keep_alive, &[]);
    }

    /// Frames `ev` as one HTTP chunk after whatever `out` holds, and writes it all.
    async fn send_event(&mut self) -> io::Result<()> {
        http::write_chunk(&mut self.out, &self.ev);
        self.ev.clear();
        if self.burst {
            return Ok(());
        }
        self.send_out().await
    }

    /// Before content piece number `sent`: whether a fault mode stops the pieces here (a malformed event due now is
    /// written first).
    async fn before_piece(&mut self, mode: Mode, sent: u32, framing: Framing) -> io::Result<bool> {
        match mode {
            Mode::Cut(n) | Mode::Stall(n) | Mode::KeepAlive(n, _) | Mode::InBandError(n, _) if sent >= n => {
                return Ok(true);
            }
            Mode::Malformed(at) if sent == at => {
                self.ev.extend_from_slice(framing.malformed);
                self.send_event().await?;
            }
            _ => {}
        }
        Ok(false)
    }

    /// After the content pieces (`sent` of them): a fault mode ends the stream here (`Some`); otherwise a malformed
    /// event still due is written and the stream goes on to its end (`None`).
    async fn after_pieces(&mut self, mode: Mode, sent: u32, framing: Framing) -> io::Result<Option<Flow>> {
        match mode {
            Mode::Cut(_) => {
                // Whatever `out` holds was written; the head alone when there was no token to send.
                self.send_out().await?;
                Ok(Some(self.reset()))
            }
            Mode::Stall(_) => {
                self.send_out().await?;
                self.hang().await.map(Some)
            }
            Mode::KeepAlive(_, every_ms) => {
                self.send_out().await?;
                let _open = StreamGuard::open(&self.shared);
                loop {
                    tokio::time::sleep(Duration::from_millis(every_ms.max(1))).await;
                    self.ev.extend_from_slice(framing.keep_alive);
                    if self.send_event().await.is_err() {
                        return Ok(Some(Flow::Close));
                    }
                }
            }
            Mode::Malformed(at) if at >= sent => {
                self.ev.extend_from_slice(framing.malformed);
                self.send_event().await?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    async fn stream_answer(&mut self, call: Call, first: Duration, mode: Mode, keep_alive: bool) -> io::Result<Flow> {
        if call.endpoint == Endpoint::Responses {
            return self.stream_response(call, first, mode, keep_alive).await;
        }
        if let Some(SurfaceCall::Speech { input, voice, content_type }) = call.surface.as_deref() {
            let audio = surface::speech_audio(&call.model, input, voice);
            return self.stream_speech(&audio, content_type, first, mode, keep_alive).await;
        }
        if call.dialect.is_native() {
            return self.stream_native(call, first, mode, keep_alive).await;
        }
        let keep_alive = keep_alive && mode != Mode::MissingDone;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let events =
            StreamEvents::new(call.endpoint == Endpoint::Chat, id, unix_now(), &call.model, call.include_usage);
        self.open_stream(first, mode, keep_alive).await?;
        events.role(&mut self.ev);
        if !self.ev.is_empty() {
            self.send_event().await?;
        }
        let mut sent: u32 = 0;
        let mut total = 0;
        for piece in answers::pieces(call.answer) {
            total += 1;
            if self.before_piece(mode, sent, OPENAI_FRAMING).await? {
                break;
            }
            events.content(&mut self.ev, piece);
            self.send_event().await?;
            sent += 1;
        }
        if let Mode::InBandError(_, status) = mode {
            // OpenAI's mid-stream failure: an event holding an error object, and no `[DONE]`.
            self.ev.extend_from_slice(b"data: ");
            let message = stock_message(call.dialect, status);
            let kind = if status >= 500 { "server_error" } else { "invalid_request_error" };
            answers::write_openai_error(&mut self.ev, message, kind, None, None);
            self.ev.extend_from_slice(b"\n\n");
            return self.end_stream(keep_alive).await;
        }
        if let Some(flow) = self.after_pieces(mode, sent, OPENAI_FRAMING).await? {
            return Ok(flow);
        }
        events.finish(&mut self.ev);
        self.send_event().await?;
        events.usage(&mut self.ev, call.prompt_tokens, total);
        if !self.ev.is_empty() {
            self.send_event().await?;
        }
        if mode != Mode::MissingDone {
            self.ev.extend_from_slice(DONE_EVENT);
        }
        self.end_stream(keep_alive).await
    }
}

impl Conn {
    /// Starts a streamed body: the SSE head, sent at once (then after `first`) when the first event is to wait.
    async fn open_stream(&mut self, first: Duration, mode: Mode, keep_alive: bool) -> io::Result<()> {
        self.out.clear();
        self.ev.clear();
        self.burst = mode == Mode::Burst;
        http::write_sse_head(&mut self.out, keep_alive);
        if !first.is_zero() {
            self.send_out().await?;
            tokio::time::sleep(first).await;
        }
        Ok(())
    }

    /// Ends a streamed body: `ev` (when not empty) as the last data chunk, then the terminating chunk.
    async fn end_stream(&mut self, keep_alive: bool) -> io::Result<Flow> {
        if !self.ev.is_empty() {
            http::write_chunk(&mut self.out, &self.ev);
            self.ev.clear();
        }
        self.out.extend_from_slice(http::LAST_CHUNK);
        self.burst = false;
        self.send_out().await?;
        Ok(if keep_alive { Flow::Continue } else { Flow::Close })
    }

    /// A speech answer: chunked binary audio with its `Content-Type`; a cut or stall after `n` chunks.
    async fn stream_speech(
        &mut self,
        audio: &[u8],
        content_type: &str,
        first: Duration,
        mode: Mode,
        keep_alive: bool,
    ) -> io::Result<Flow> {
        self.out.clear();
        self.ev.clear();
        self.out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: ");
        self.out.extend_from_slice(content_type.as_bytes());
        self.out.extend_from_slice(b"\r\nTransfer-Encoding: chunked\r\n");
        if !keep_alive {
            self.out.extend_from_slice(b"Connection: close\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        if !first.is_zero() {
            self.send_out().await?;
            tokio::time::sleep(first).await;
        }
        for (sent, chunk) in audio.chunks(surface::SPEECH_CHUNK).enumerate() {
            match mode {
                Mode::Cut(n) | Mode::InBandError(n, _) if sent >= n as usize => {
                    self.send_out().await?;
                    return Ok(self.reset());
                }
                Mode::Stall(n) | Mode::KeepAlive(n, _) if sent >= n as usize => {
                    self.send_out().await?;
                    return self.hang().await;
                }
                _ => {}
            }
            self.ev.extend_from_slice(chunk);
            self.send_event().await?;
        }
        self.out.extend_from_slice(http::LAST_CHUNK);
        self.send_out().await?;
        Ok(if keep_alive { Flow::Continue } else { Flow::Close })
    }
}

/// The stored form of a Responses call answered with response number `n`.
fn stored_of(call: &Call, n: u64, status: &'static str) -> (String, Stored) {
    let r = call.responses.as_deref();
    let stored = Stored {
        key: r.map(|r| r.key.clone()).unwrap_or_default(),
        model: call.model.clone(),
        created: unix_now(),
        input: r.map(|r| r.input.clone()).unwrap_or_default(),
        text: call.answer.to_owned(),
        prompt_tokens: call.prompt_tokens,
        status,
        previous: r.and_then(|r| r.previous.clone()),
    };
    (resp::response_id(n), stored)
}

impl Conn {
    /// A streamed Responses API answer: typed events, the same faults as chat streams. A cut or stalled stream never
    /// sends `response.completed`; the stored response stays `in_progress` until it completes.
    async fn stream_response(&mut self, call: Call, first: Duration, mode: Mode, keep_alive: bool) -> io::Result<Flow> {
        let keep_alive = keep_alive && mode != Mode::MissingDone;
        let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (rid, stored) = stored_of(&call, n, "completed");
        if call.stores() {
            let mut pending = stored.clone();
            pending.status = "in_progress";
            self.shared.lock().store_response(rid.clone(), pending);
        }
        let mut events = ResponsesEvents::new(rid.clone(), stored);
        self.open_stream(first, mode, keep_alive).await?;
        events.start(&mut self.ev);
        self.send_event().await?;
        let mut sent: u32 = 0;
        for piece in answers::pieces(call.answer) {
            if self.before_piece(mode, sent, OPENAI_FRAMING).await? {
                break;
            }
            events.delta(&mut self.ev, piece);
            self.send_event().await?;
            sent += 1;
        }
        if let Mode::InBandError(_, status) = mode {
            let code = if status >= 500 { "server_error" } else { "invalid_request_error" };
            events.error(&mut self.ev, code, stock_message(call.dialect, status));
            return self.end_stream(keep_alive).await;
        }
        if let Some(flow) = self.after_pieces(mode, sent, OPENAI_FRAMING).await? {
            return Ok(flow);
        }
        events.finish(&mut self.ev);
        if call.stores()
            && let Some(s) = self.shared.lock().responses.get_mut(&rid)
        {
            s.status = "completed";
        }
        http::write_chunk(&mut self.out, &self.ev);
        self.ev.clear();
        self.out.extend_from_slice(http::LAST_CHUNK);
        self.burst = false;
        self.send_out().await?;
        Ok(if keep_alive { Flow::Continue } else { Flow::Close })
    }

    /// `GET`/`DELETE /v1/responses/{id}`, `POST …/cancel`, `GET …/input_items`: only for the key that created it.
    fn stored(&mut self, head: Head, id: &str, op: StoredOp) {
        let keep_alive = head.keep_alive;
        let key = head.bearer.clone();
        let mut state = self.shared.lock();
        let invalid = key.as_ref().is_some_and(|k| state.invalid_keys.contains(k));
        let found = key.as_deref().and_then(|k| state.response_of(id, k)).cloned();
        if op == StoredOp::Delete && found.is_some() {
            state.responses.remove(id);
        }
        if op == StoredOp::Cancel
            && found.as_ref().is_some_and(|s| s.status == "in_progress")
            && let Some(live) = state.responses.get_mut(id)
        {
            live.status = "cancelled";
        }
        state.record(SeenRequest {
            path: head.target,
            model: None,
            api_key: key.clone(),
            stream: false,
            body: Value::Null,
            at: Instant::now(),
        });
        drop(state);
        if key.is_none() {
            let message = "You didn't provide an API key.";
            self.reply_openai_error(401, keep_alive, message, "invalid_request_error", None, Some("invalid_api_key"));
            return;
        }
        if invalid {
            let message =
                format!("Incorrect API key provided: {}.", answers::mask_key(key.as_deref().unwrap_or_default()));
            self.reply_openai_error(401, keep_alive, &message, "invalid_request_error", None, Some("invalid_api_key"));
            return;
        }
        let Some(stored) = found else {
            let message = format!("Response with id '{id}' not found.");
            self.reply_openai_error(404, keep_alive, &message, "invalid_request_error", None, None);
            return;
        };
        self.ev.clear();
        match op {
            StoredOp::Get => resp::write_response(&mut self.ev, id, &stored),
            StoredOp::Delete => resp::write_deleted(&mut self.ev, id),
            StoredOp::InputItems => resp::write_input_items(&mut self.ev, id, &stored.input),
            StoredOp::Cancel if stored.status == "in_progress" => {
                let mut cancelled = stored;
                cancelled.status = "cancelled";
                let _ = serde_json::to_writer(&mut self.ev, &resp::object(id, &cancelled, None, false));
            }
            StoredOp::Cancel => {
                let message = "Only responses created with background=true can be cancelled.";
                self.reply_openai_error(400, keep_alive, message, "invalid_request_error", None, None);
                return;
            }
        }
        self.reply_json(200, keep_alive, &[]);
    }
}
